"""Host GPU drivers and high-speed network devices in the container: ``--nv``, ``--rocm``, InfiniBand.

As Apptainer does, the host's *driver* (user-space libraries matching the
loaded kernel module, a few programs and the device nodes) is lent to the
container; the image brings its own CUDA/ROCm toolkit:

* libraries named in ``nvliblist.conf``/``rocmliblist.conf`` (the packaged
  list in ``yurt/runtime/data``, or the site's ``/etc/yurt/<name>``) are found
  in the host's ld.so cache (``ldconfig -p``, 64-bit entries of this
  machine's ABI) and bound one by one into ``/.singularity.d/libs``, which is
  put first on ``LD_LIBRARY_PATH`` (also after the image's env scripts, by a
  generated ``/.singularity.d/env/99-zz-yurt-libs.sh``);
* programs (``nvidia-smi``...) are found on the host's ``PATH`` and bound
  into ``/usr/bin``;
* device nodes: without ``--contain`` the container sees the host's ``/dev``
  already; with it, the nodes (``/dev/nvidia*``, ``/dev/nvidia-caps``,
  ``/dev/kfd``, ``/dev/dri``) are bound into the minimal ``/dev``, limited by
  ``NVIDIA_VISIBLE_DEVICES`` when it lists GPU indices.

``YURT_DRIVER_ROOT`` (default ``/``) moves every host-side lookup under
another tree: devices in ``ROOT/dev``, programs in ``ROOT/usr/bin`` etc., and
libraries in ``ROOT/etc/ld.so.cache`` (read with ``ldconfig -p -C``) plus the
usual library directories under ``ROOT``, scanned.  Tests use it with a fake
driver tree; sites can use it for drivers installed outside ``/``.

Everything here runs in the parent, before any namespace exists, and only
edits the ContainerSpec (mounts, environment): these integrations are
"built-in hooks" that a site can replace with real OCI hooks (see
:mod:`yurt.runtime.hooks`).  With nothing found, one warning line is printed
and the container runs without the device.
"""

from __future__ import annotations

import os

from yurt.config import sysconf_path
from yurt.errors import warn
from yurt.record import Record
from yurt.spec import ContainerSpec, Mount

LIBS_DIR = "/.singularity.d/libs"
BIN_DIR = "/usr/bin"
ENV_SCRIPT = "/.singularity.d/env/99-zz-yurt-libs.sh"
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
LIB_DIRS = ("usr/lib64", "usr/lib/{multiarch}", "usr/lib", "lib64", "lib/{multiarch}", "lib",
            "usr/local/lib64", "usr/local/lib")
BIN_DIRS = ("usr/local/bin", "usr/bin", "usr/sbin", "bin", "sbin")
# The ld.so cache tag of this machine's native (64-bit) libraries.
ABI_TAGS = {"x86_64": "x86-64", "aarch64": "AArch64", "ppc64le": "64bit", "riscv64": "64bit", "s390x": "64bit"}
MULTIARCH = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu", "ppc64le": "powerpc64le-linux-gnu",
             "riscv64": "riscv64-linux-gnu", "s390x": "s390x-linux-gnu"}


class Vendor(Record):
    """One kind of accelerator: its flag, file list and device nodes (globs under ``ROOT/dev``)."""

    __slots__ = ("name", "flag", "liblist", "core", "devices", "sockets")
    _defaults = {"sockets": tuple}
    name: str
    flag: str
    liblist: str
    core: tuple[str, ...]  # library prefixes only the driver has: without one, there is no driver
    devices: tuple[str, ...]
    sockets: tuple[str, ...]


NVIDIA = Vendor("NVIDIA", "--nv", "nvliblist.conf", ("libcuda.so", "libnvidia-ml.so"), ("nvidia*", "nvidia-caps"),
                ("/var/run/nvidia-persistenced/socket",))
ROCM = Vendor("AMD ROCm", "--rocm", "rocmliblist.conf", ("libhsa-runtime64.so", "libhsakmt.so", "libamdhip64.so"),
              ("kfd", "dri"))


class Discovery(Record):
    """What was found on the host: ``libraries`` and ``binaries`` map a name to its host path."""

    __slots__ = ("vendor", "libraries", "binaries", "devices", "sockets")
    _defaults = {"libraries": dict, "binaries": dict, "devices": list, "sockets": list}
    vendor: Vendor
    libraries: dict[str, str]
    binaries: dict[str, str]
    devices: list[str]  # host paths under ROOT/dev
    sockets: list[str]


def driver_root(env: dict[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return env.get("YURT_DRIVER_ROOT") or "/"


def liblist_path(vendor: Vendor, env: dict[str, str]) -> str:
    """The site's list (``/etc/yurt/nvliblist.conf``...) when it has one, else the packaged default."""
    site = sysconf_path(vendor.liblist, env)
    return site if os.path.isfile(site) else os.path.join(DATA_DIR, vendor.liblist)


def parse_liblist(text: str) -> tuple[list[str], list[str]]:
    """``(library prefixes, programs)`` from an nvliblist-style file."""
    libs: list[str] = []
    bins: list[str] = []
    for raw in text.splitlines():
        name = raw.split("#", 1)[0].strip()
        if not name:
            continue
        if "/" in name:
            continue  # names only: a path here would let the list reach outside the lookup rules
        (libs if ".so" in name else bins).append(name)
    return libs, bins


def parse_ldconfig(output: str, machine: str | None = None) -> list[tuple[str, str]]:
    """``(soname, path)`` for each native-ABI entry of ``ldconfig -p`` output, in cache order."""
    machine = machine or os.uname().machine
    tag = ABI_TAGS.get(machine)
    out: list[tuple[str, str]] = []
    for line in output.splitlines():
        line = line.strip()
        name, sep, rest = line.partition(" (")
        if not sep or "=>" not in rest:
            continue
        flags, _, path = rest.partition(") => ")
        if not path:
            continue
        if tag and tag not in [f.strip() for f in flags.split(",")]:
            continue
        out.append((name.strip(), path.strip()))
    return out


def _ldconfig() -> str | None:
    for candidate in ("/sbin/ldconfig", "/usr/sbin/ldconfig", "/sbin/ldconfig.real"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def ld_cache(root: str) -> list[tuple[str, str]]:
    """The host's ld.so cache (``ROOT/etc/ld.so.cache`` when ROOT is not ``/``), paths made host paths."""
    cache = os.path.join(root, "etc/ld.so.cache")
    if root != "/" and not os.path.isfile(cache):
        return []
    tool = _ldconfig()
    if tool is None:
        return []
    import subprocess

    args = [tool, "-p"] if root == "/" else [tool, "-p", "-C", cache]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    entries = parse_ldconfig(proc.stdout)
    if root != "/":
        entries = [(n, p if p.startswith(root.rstrip("/") + "/") else os.path.join(root, p.lstrip("/")))
                   for n, p in entries]
    return entries


def scan_libraries(root: str, machine: str | None = None) -> list[tuple[str, str]]:
    """``(name, path)`` of the files in ROOT's usual library directories (for trees without a cache)."""
    multiarch = MULTIARCH.get(machine or os.uname().machine, "")
    out: list[tuple[str, str]] = []
    for pattern in LIB_DIRS:
        d = os.path.join(root, pattern.format(multiarch=multiarch))
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        paths = [os.path.join(d, n) for n in names if ".so" in n]
        linked = {os.path.realpath(p) for p in paths if os.path.islink(p)}
        # what the loader would look for: the soname links, or a file nothing links to
        out.extend((os.path.basename(p), p) for p in paths if os.path.islink(p) or p not in linked)
    return out


def match_libraries(prefixes: list[str], entries: list[tuple[str, str]]) -> dict[str, str]:
    """Each cache name that starts with a listed prefix -> the file it resolves to (first entry wins)."""
    found: dict[str, str] = {}
    for name, path in entries:
        if name in found or not any(name.startswith(p) for p in prefixes):
            continue
        real = os.path.realpath(path)
        if os.path.isfile(real):
            found[name] = real
    return found


def find_binaries(names: list[str], root: str, path_env: str) -> dict[str, str]:
    if root == "/":
        dirs = [d for d in path_env.split(":") if d.startswith("/")] + ["/" + d for d in BIN_DIRS]
    else:
        dirs = [os.path.join(root, d) for d in BIN_DIRS]
    found: dict[str, str] = {}
    for name in names:
        for d in dirs:
            candidate = os.path.join(d, name)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                found[name] = os.path.realpath(candidate)
                break
    return found


def find_devices(vendor: Vendor, root: str, visible: str | None = None) -> list[str]:
    """Device nodes (and node directories) of ``vendor`` under ``ROOT/dev``.

    ``visible`` is ``NVIDIA_VISIBLE_DEVICES``: a comma list of GPU indices
    keeps only those ``nvidiaN`` nodes; ``none``/``void`` keeps none; ``all``,
    unset, or UUIDs (which need the driver to resolve) keep every GPU.
    """
    import fnmatch

    dev = os.path.join(root, "dev")
    try:
        names = sorted(os.listdir(dev))
    except OSError:
        return []
    wanted: set[str] | None = None
    if visible is not None and vendor is NVIDIA:
        v = visible.strip().lower()
        if v in ("none", "void", ""):
            wanted = set()
        elif v != "all":
            items = [x.strip() for x in v.split(",") if x.strip()]
            if all(x.isdigit() for x in items):
                wanted = {f"nvidia{int(x)}" for x in items}
    out = []
    for name in names:
        if not any(fnmatch.fnmatchcase(name, g) for g in vendor.devices):
            continue
        if wanted is not None and name[len("nvidia"):].isdigit() and name.startswith("nvidia") \
                and name not in wanted:
            continue
        out.append(os.path.join(dev, name))
    return out


def discover(vendor: Vendor, env: dict[str, str] | None = None) -> Discovery:
    env = os.environ if env is None else env
    root = driver_root(env)
    try:
        with open(liblist_path(vendor, env), encoding="utf-8") as f:
            prefixes, programs = parse_liblist(f.read())
    except OSError:
        prefixes, programs = [], []
    entries = ld_cache(root) if prefixes else []
    if root != "/" and prefixes:
        entries += scan_libraries(root)
    sockets = [s for s in vendor.sockets if os.path.exists(os.path.join(root, s.lstrip("/")))]
    return Discovery(vendor=vendor, libraries=match_libraries(prefixes, entries),
                     binaries=find_binaries(programs, root, env.get("PATH", "")),
                     devices=find_devices(vendor, root, env.get("NVIDIA_VISIBLE_DEVICES")),
                     sockets=[os.path.join(root, s.lstrip("/")) for s in sockets])


def apply_discovery(spec: ContainerSpec, found: Discovery, root: str = "/") -> None:
    """Bind what was found; warn once when the host has no such driver (the container still runs)."""
    v = found.vendor
    has_driver = any(name.startswith(v.core) for name in found.libraries)
    if not has_driver and not found.devices:
        warn(f"{v.flag}: no {v.name} driver found on this host (no {' or '.join(v.core)} in the ld.so cache, "
             f"no device under {os.path.join(root, 'dev')}); running without {v.name} GPU support")
        return
    if not found.devices:
        warn(f"{v.flag}: {v.name} driver libraries found but no device node; the GPU will not be usable")
    elif not has_driver:
        warn(f"{v.flag}: {v.name} device nodes found but no driver library in the ld.so cache")
    for name, host in sorted(found.libraries.items()):
        spec.mounts.append(Mount(f"{LIBS_DIR}/{name}", "bind", host, ["ro"]))
    for name, host in sorted(found.binaries.items()):
        spec.mounts.append(Mount(f"{BIN_DIR}/{name}", "bind", host, ["ro"]))
    for host in found.sockets:
        dest = "/" + os.path.relpath(host, root)
        spec.mounts.append(Mount(dest, "bind", host, optional=True))
    add_device_nodes(spec, [(host, "/dev/" + os.path.basename(host)) for host in found.devices])
    if found.libraries:
        prepend_library_dir(spec)


def add_device_nodes(spec: ContainerSpec, nodes: list[tuple[str, str]]) -> None:
    """Make host device nodes (``(host path, container path)``) visible in the container.

    Under ``--contain`` they are bound into the minimal ``/dev`` (the devdir
    mount's ``node=`` options); with the host's ``/dev`` bound, a node at the
    same path is already there and anything else is bound over an existing
    node or skipped with a warning (an unprivileged user cannot add files to
    the host's ``/dev``).
    """
    devdir = next((m for m in spec.mounts if m.destination == "/dev" and m.kind == "devdir"), None)
    host_dev = any(m.destination == "/dev" and m.kind == "bind" and m.source == "/dev" for m in spec.mounts)
    skipped = []
    for host, dest in nodes:
        dest = "/" + os.path.normpath(dest).lstrip("/")
        if devdir is not None and dest.startswith("/dev/"):
            option = f"node={host}:{dest[len('/dev/'):]}"
            if option not in devdir.options:
                devdir.options.append(option)
            continue
        if host_dev and dest.startswith("/dev/"):
            if host == dest:
                continue  # already visible
            if not os.path.exists(dest):
                skipped.append(host)
                continue
        spec.mounts.append(Mount(dest, "bind", host, ["dev"]))
    if skipped:
        warn(f"cannot add {', '.join(skipped)} to the host's /dev the container shares; use --contain to get them")


def prepend_library_dir(spec: ContainerSpec) -> None:
    """``/.singularity.d/libs`` first on ``LD_LIBRARY_PATH``, also after the image's env scripts."""
    current = spec.process.env.get("LD_LIBRARY_PATH", "")
    parts = [p for p in current.split(":") if p]
    if LIBS_DIR not in parts:
        spec.process.env["LD_LIBRARY_PATH"] = ":".join([LIBS_DIR, *parts])
    if not any(m.destination == ENV_SCRIPT for m in spec.mounts):
        script = (f'case ":${{LD_LIBRARY_PATH:-}}:" in *:{LIBS_DIR}:*) ;; '
                  f'*) LD_LIBRARY_PATH="{LIBS_DIR}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}" ;; esac\n'
                  "export LD_LIBRARY_PATH\n")
        spec.mounts.append(Mount(ENV_SCRIPT, "file", content=script.encode()))


# --- InfiniBand / high-speed network --------------------------------------

IB_CONFIG_DIRS = ("etc/libibverbs.d",)
IB_PROVIDER_DIRS = ("libibverbs", "libfabric")


def infiniband_edits(spec: ContainerSpec, env: dict[str, str] | None = None) -> bool:
    """The host's RDMA devices and verbs/libfabric providers, when the host has ``/dev/infiniband``.

    The device directory goes into a ``--contain`` ``/dev`` (the host's
    ``/dev`` shows it anyway).  Provider plug-ins must match the host's kernel
    drivers (MOFED...), so the host's provider directories
    (``<libdir>/libibverbs``, ``<libdir>/libfabric``) and ``/etc/libibverbs.d``
    are bound at the same paths, where the image's own libibverbs/libfabric
    look for them (an image without those libraries simply never reads them).
    Returns whether anything was added.
    """
    root = driver_root(env)
    ib = os.path.join(root, "dev/infiniband")
    if not os.path.isdir(ib):
        return False
    add_device_nodes(spec, [(ib, "/dev/infiniband")])
    multiarch = MULTIARCH.get(os.uname().machine, "")
    for rel in IB_CONFIG_DIRS:
        host = os.path.join(root, rel)
        if os.path.isdir(host):
            spec.mounts.append(Mount("/" + rel, "bind", host, ["ro"]))
    for libdir in (f"usr/lib/{multiarch}", "usr/lib64"):
        for sub in IB_PROVIDER_DIRS:
            host = os.path.join(root, libdir, sub)
            if os.path.isdir(host):
                spec.mounts.append(Mount(f"/{libdir}/{sub}", "bind", host, ["ro"]))
    return True
