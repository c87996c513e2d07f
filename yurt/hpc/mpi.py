"""MPI in containers: what the hybrid model needs passed through, and the ``--mpi=host`` bind model.

Hybrid model (the default): the host's ``mpirun``/``srun`` starts one ``yurt exec`` per rank and the
image's own MPI talks to the host's launcher.  yurt passes the PMI/PMIx environment through untouched;
:func:`hybrid_edits` adds what a container would otherwise lose:

* the PMIx server's directory (``PMIX_SERVER_TMPDIR``, with Slurm ``<SlurmdSpoolDir>/pmix.JOB.STEP``;
  the shared-memory data store lives there) is bound at the same path when the container would not
  see it (``/var/spool`` is not bound by default);
* with one user namespace per rank, Open MPI 4's shared-memory transport (vader) cannot use CMA
  (``process_vm_readv`` between ranks in different user namespaces) and its fallback hangs on
  messages of a few MiB.  yurt then sets ``OMPI_MCA_btl_vader_single_copy_mechanism=none`` (copy
  through the shared segment: correct, slower for large messages) unless the user set it.  Ranks that
  share one container per node (``--sharens``) keep CMA and need no such setting.

Bind model (``--mpi=host``): the host's MPI library (``libmpi.so.N`` from the ld.so cache, or
``$YURT_MPI_LIBRARY``), its dependencies (walked through ELF ``DT_NEEDED``, see :mod:`yurt.hpc.elf`,
glibc excepted: the image keeps its own C library) and its plug-in trees (Open MPI's MCA components,
PMIx, UCX and libfabric providers, bound at their host paths, where the libraries look for them)
are bound into ``/.singularity.d/libs``, which goes first on ``LD_LIBRARY_PATH`` as with ``--nv``.
Inside the container, before the payload starts, the image's own MPI (from its ``/etc/ld.so.cache``)
is compared with the host's: MPICH ABI (``libmpi.so.12``: MPICH, Intel MPI, MVAPICH, Cray MPICH) and
Open MPI (``libmpi.so.40``; the libtool minor number orders releases: 40.20 = 4.0, 40.30 = 4.1) do
not mix, and the host's Open MPI must be at least as new as the image's.  An incompatible pair is
refused with one line; an image without MPI is accepted (it relies on the host's).
"""

from __future__ import annotations

import json
import os
import re
import struct

from yurt.errors import RuntimeSetupError, UsageError
from yurt.record import Record

LIBS_DIR = "/.singularity.d/libs"
ANNOTATION = "yurt.mpi.host"
SINGLE_COPY = "OMPI_MCA_btl_vader_single_copy_mechanism"
SINGLE_COPY_ANNOTATION = "yurt.mpi.single-copy"  # set when yurt (not the user) chose the mechanism
# The C library and the loader stay the image's: binding the host's would break every other program.
GLIBC = ("ld-linux", "ld64.so", "libc.so", "libm.so", "libmvec.so", "libpthread.so", "libdl.so", "librt.so",
         "libresolv.so", "libutil.so", "libanl.so", "libnsl.so", "libBrokenLocale.so", "libc_malloc_debug.so",
         "libthread_db.so")
# Directories next to a bound library that hold plug-ins it (or its dependencies) dlopen by path.
PLUGIN_DIRS = re.compile(r"^(openmpi\d*|pmix\d*|prrte|mpich\d*|ucx|libfabric)$")
DATA_DIRS = {"openmpi": ("/etc/openmpi", "/usr/share/openmpi", "/usr/share/pmix", "/etc/pmix"),
             "mpich": (), "unknown": ()}
SYSTEM_LIB_DIRS = ("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib", "/usr/local/lib64")
LIBMPI = re.compile(r"^libmpi\.so\.(\d+)(?:\.(\d+))?(?:\.(\d+))?$")
FAMILY_NAMES = {"openmpi": "Open MPI", "mpich": "MPICH-ABI MPI", "unknown": "MPI"}
MAX_WALK = 2000  # libraries and plug-ins; a guard against pathological trees
RANK_MARKERS = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE", "SLURM_STEP_ID")


class MPILibrary(Record):
    """One ``libmpi.so.N``: ``abi`` is (N, libtool minor or None), ``version`` a release string if found."""

    __slots__ = ("path", "name", "family", "abi", "version")
    _defaults = {"version": None}
    path: str
    name: str  # the most versioned file name seen (libmpi.so.40.30.4)
    family: str  # openmpi | mpich | unknown
    abi: tuple[int, int | None]
    version: str | None

    def describe(self) -> str:
        what = FAMILY_NAMES[self.family] + (f" {self.version}" if self.version else "")
        return f"{what} (libmpi.so.{self.abi[0]}{'' if self.abi[1] is None else f'.{self.abi[1]}'})"

    def to_json(self) -> str:
        return json.dumps({"path": self.path, "name": self.name, "family": self.family, "abi": list(self.abi),
                           "version": self.version})

    @classmethod
    def from_json(cls, text: str) -> MPILibrary:
        d = json.loads(text)
        return cls(d["path"], d["name"], d["family"], (int(d["abi"][0]), d["abi"][1]), d.get("version"))


# --- identifying a library -----------------------------------------------------------------

def identify(path: str, names: list[str] | None = None, read_version: bool = True) -> MPILibrary | None:
    """Describe the MPI library at ``path`` (``names``: the symlink chain's file names, most generic first)."""
    chain = list(names or [])
    chain.append(os.path.basename(path))
    best = None
    for n in chain:
        m = LIBMPI.match(n)
        if m and (best is None or n.count(".") > best.string.count(".")):
            best = m
    if best is None:
        return None
    major = int(best.group(1))
    minor = int(best.group(2)) if best.group(2) is not None else None
    family, version = _family_and_version(path, major, read_version)
    return MPILibrary(path, best.string, family, (major, minor), version)


def _family_and_version(path: str, major: int, read: bool) -> tuple[str, str | None]:
    family = {40: "openmpi", 12: "mpich"}.get(major, "unknown")
    if not read:
        return family, None
    try:
        with open(path, "rb") as f:
            data = f.read(32 << 20)
    except OSError:
        return family, None
    if family == "unknown" and b"Open MPI" in data:
        family = "openmpi"
    if family == "openmpi":
        m = re.search(rb"\0v(\d+\.\d+\.\d+[a-z0-9]*)\0", data)
        return family, m.group(1).decode() if m else None
    m = re.search(rb"(?:MPICH|Intel\(R\) MPI Library|MVAPICH2?) Version:?\s*([0-9][0-9.a-z]*)", data)
    if m:
        return "mpich" if family == "unknown" else family, m.group(1).decode()
    return family, None


def incompatibility(host: MPILibrary, image: MPILibrary | None) -> str | None:
    """Why the host's library cannot replace the image's, or None when it can."""
    if image is None:
        return None
    if host.family != image.family and "unknown" not in (host.family, image.family):
        return (f"the image has {image.describe()} but the host has {host.describe()}; their ABIs differ "
                f"(rebuild the image with {FAMILY_NAMES[host.family]}, or run without --mpi=host)")
    if host.abi[0] != image.abi[0]:
        return (f"the image's {image.describe()} and the host's {host.describe()} have different ABI versions "
                "(run without --mpi=host, or use an image built against the host's MPI)")
    if host.family == "openmpi" and None not in (host.abi[1], image.abi[1]) and host.abi[1] < image.abi[1]:
        return (f"the host's {host.describe()} is older than the image's {image.describe()}; a binary built "
                "against a newer Open MPI needs at least that version (run without --mpi=host)")
    return None


# --- the image's MPI (runs inside the container, after pivot_root: no imports from here on) ------------

CACHE_MAGIC = b"glibc-ld.so.cache1.1"


def parse_ld_cache(data: bytes) -> list[tuple[str, str]]:
    """``(name, path)`` entries of a glibc ``ld.so.cache`` (new format, also behind the old one)."""
    start = data.find(CACHE_MAGIC)
    if start < 0:
        return []
    nlibs, = struct.unpack_from("<I", data, start + 20)
    out = []
    base = start + 48
    for i in range(min(nlibs, 1 << 16)):
        off = base + i * 24
        if off + 24 > len(data):
            break
        _flags, key, value = struct.unpack_from("<iII", data, off)
        out.append((_cstr(data, start + key), _cstr(data, start + value)))
    return out


def _cstr(data: bytes, off: int) -> str:
    end = data.find(b"\0", off)
    return data[off:end if end >= 0 else len(data)].decode("utf-8", "replace")


def image_library(root: str = "/") -> MPILibrary | None:
    """The MPI library the image's loader would pick (its ld.so cache, else its usual library dirs)."""
    entries: list[tuple[str, str]] = []
    try:
        with open(os.path.join(root, "etc/ld.so.cache"), "rb") as f:
            entries = parse_ld_cache(f.read(64 << 20))
    except OSError:
        pass
    if not entries:
        for d in ("usr/lib/x86_64-linux-gnu", "usr/lib/aarch64-linux-gnu", "usr/lib64", "usr/lib", "lib64", "lib",
                  "usr/local/lib"):
            try:
                names = sorted(os.listdir(os.path.join(root, d)))
            except OSError:
                continue
            entries += [(n, "/" + d + "/" + n) for n in names if n.startswith("libmpi.so.")]
    for name, path in entries:
        if LIBMPI.match(name):
            # names only for the two known ABIs: a bound host tree may now hide the image's file
            major = LIBMPI.match(name).group(1)
            return identify(os.path.join(root, path.lstrip("/")), [name, *_link_names(root, path)],
                            read_version=major not in ("12", "40"))
    return None


def _link_names(root: str, path: str) -> list[str]:
    """File names along a symlink chain inside ``root`` (names only: the target may be hidden by a bind)."""
    names = []
    current = path
    for _ in range(8):
        try:
            target = os.readlink(os.path.join(root, current.lstrip("/")))
        except OSError:
            break
        names.append(os.path.basename(target))
        current = target if target.startswith("/") else os.path.join(os.path.dirname(current), target)
    return names


def container_check(annotation: str):
    """A check to run inside the container before the payload (``YurtExtras.container_checks``)."""
    host = MPILibrary.from_json(annotation)

    def check() -> None:
        try:
            image = image_library("/")
        except (OSError, ValueError, struct.error):
            image = None
        reason = incompatibility(host, image)
        if reason:
            raise RuntimeSetupError(f"--mpi=host: {reason}")

    return check


# --- the host's MPI ---------------------------------------------------------------------------

def find_host_library(env: dict[str, str]) -> MPILibrary:
    """``$YURT_MPI_LIBRARY``, else the first ``libmpi.so.N`` of the host's ld.so cache."""
    configured = env.get("YURT_MPI_LIBRARY")
    if configured:
        if not os.path.isfile(configured):
            raise UsageError(f"--mpi=host: YURT_MPI_LIBRARY={configured} is not a file")
        lib = identify(os.path.realpath(configured), [os.path.basename(configured)])
        if lib is None:
            raise UsageError(f"--mpi=host: {configured} is not named libmpi.so.N")
        return lib
    from yurt.runtime.gpu import ld_cache

    # LD_LIBRARY_PATH first, as the loader does: environment modules put their MPI there, not in the cache.
    for name, path in [*library_path_entries(env), *ld_cache("/")]:
        if LIBMPI.match(name):
            lib = identify(os.path.realpath(path), [name, os.path.basename(path)])
            if lib is not None:
                return lib
    raise UsageError("--mpi=host: no MPI library (libmpi.so.N) on LD_LIBRARY_PATH or in the host's ld.so cache",
                     "load your MPI module, or set YURT_MPI_LIBRARY=/path/to/libmpi.so.N")


def library_path_entries(env: dict[str, str]) -> list[tuple[str, str]]:
    """``(file name, path)`` of the shared libraries in the host's ``LD_LIBRARY_PATH`` directories, in order."""
    out: list[tuple[str, str]] = []
    for d in env.get("LD_LIBRARY_PATH", "").split(":"):
        if not d or not os.path.isabs(d):
            continue
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        out += [(n, os.path.join(d, n)) for n in names if n.startswith("lib") and ".so" in n]
    return out


def _is_glibc(name: str) -> bool:
    return name.startswith(GLIBC)


def _system_dir(d: str) -> bool:
    d = d.rstrip("/")
    return d in SYSTEM_LIB_DIRS or any(d == s + "/" + a for s in ("/lib", "/usr/lib")
                                       for a in ("x86_64-linux-gnu", "aarch64-linux-gnu", "powerpc64le-linux-gnu",
                                                 "riscv64-linux-gnu", "s390x-linux-gnu"))


class Closure(Record):
    """What to bind: ``libraries`` (soname -> host file) into LIBS_DIR, ``trees`` at their host paths."""

    __slots__ = ("libraries", "trees", "unresolved")
    _defaults = {"libraries": dict, "trees": list, "unresolved": list}
    libraries: dict[str, str]
    trees: list[str]
    unresolved: list[str]


def closure(lib_path: str, cache: dict[str, str]) -> Closure:
    """The library at ``lib_path``, everything it needs, and its plug-in trees (their needs too)."""
    from yurt.hpc.elf import read_dynamic

    out = Closure()
    seen_files: set[str] = set()
    queue: list[tuple[str, str | None]] = [(lib_path, None)]  # (file, soname it was needed as)
    tree_set: set[str] = set()
    while queue and len(seen_files) < MAX_WALK:
        path, as_name = queue.pop()
        real = os.path.realpath(path)
        if real in seen_files:
            continue
        seen_files.add(real)
        info = read_dynamic(real)
        if as_name is not None:
            out.libraries.setdefault(as_name, real)
        elif info is not None and info.soname and not _in_trees(real, tree_set):
            out.libraries.setdefault(info.soname, real)
        for d in _trees_for(real):
            if d not in tree_set:
                tree_set.add(d)
                queue.extend((f, None) for f in _shared_objects(d))
        if info is None:
            continue
        origin = os.path.dirname(real)
        for need in info.needed:
            if _is_glibc(need):
                continue
            found = _resolve(need, info.runpath, origin, cache)
            if found is None:
                if need not in out.unresolved:
                    out.unresolved.append(need)
                continue
            queue.append((found, need))
    out.trees = [t for t in sorted(tree_set) if not _in_trees(t, tree_set)]  # a parent's bind covers its children
    return out


def _in_trees(path: str, trees: set[str]) -> bool:
    return any(path.startswith(t + "/") for t in trees)


def _trees_for(real: str) -> list[str]:
    """The library's own directory when it is MPI-specific (not /usr/lib...), and plug-in dirs beside it."""
    d = os.path.dirname(real)
    out = [] if _system_dir(d) else [d]
    try:
        names = os.listdir(d)
    except OSError:
        return out
    for n in sorted(names):
        if PLUGIN_DIRS.match(n) and os.path.isdir(os.path.join(d, n)):
            out.append(os.path.join(d, n))
    return out


def _shared_objects(d: str) -> list[str]:
    found = []
    for base, dirs, files in os.walk(d):
        dirs.sort()
        found += [os.path.join(base, f) for f in sorted(files) if ".so" in f and not f.endswith((".la", ".a"))]
        if len(found) > MAX_WALK:
            break
    return found


def _resolve(need: str, runpath: list[str], origin: str, cache: dict[str, str]) -> str | None:
    for d in runpath:
        d = d.replace("$ORIGIN", origin).replace("${ORIGIN}", origin)
        candidate = os.path.join(d, need)
        if os.path.exists(candidate):
            return candidate
    return cache.get(need)


def host_edits(spec, env: dict[str, str] | None = None) -> MPILibrary:
    """``--mpi=host``: bind the host's MPI into ``spec`` and arrange the in-container ABI check."""
    from yurt.runtime import gpu
    from yurt.spec import Mount

    env = dict(os.environ) if env is None else env
    host = find_host_library(env)
    cache: dict[str, str] = {}
    for name, path in [*library_path_entries(env), *gpu.ld_cache("/")]:
        cache.setdefault(name, path)
    found = closure(host.path, cache)
    if found.unresolved:
        gpu.warn(f"--mpi=host: {host.describe()} needs {', '.join(found.unresolved)}, found neither on "
                 "LD_LIBRARY_PATH nor in the ld.so cache; the program may fail to load in the container")
    taken = {m.destination for m in spec.mounts}
    for tree in found.trees:
        if tree not in taken:
            spec.mounts.append(Mount(tree, "bind", tree, ["ro"]))
    for data in DATA_DIRS[host.family]:
        if data not in taken and os.path.isdir(data):
            spec.mounts.append(Mount(data, "bind", data, ["ro"]))
    for name, path in sorted(found.libraries.items()):
        dest = f"{LIBS_DIR}/{name}"
        if dest not in taken:
            spec.mounts.append(Mount(dest, "bind", path, ["ro"]))
    gpu.prepend_library_dir(spec)
    spec.annotations[ANNOTATION] = host.to_json()
    spec.extras.container_checks.append(container_check(spec.annotations[ANNOTATION]))
    if spec.extras.debug:
        import sys

        sys.stderr.write(f"yurt: debug: --mpi=host: {host.describe()} at {host.path}: {len(found.libraries)} "
                         f"libraries, trees {found.trees}, unresolved {found.unresolved}\n")
    return host


# --- the hybrid model ---------------------------------------------------------------------------

def plan_edits(spec, host_env: dict[str, str], *, host: bool = False) -> None:
    """What ``--mpi`` (and running as a rank) adds to a planned container (called by the planner)."""
    hybrid_edits(spec, host_env)
    if host:
        host_edits(spec, host_env)


def is_rank(env: dict[str, str]) -> bool:
    return any(k in env for k in RANK_MARKERS)


def pmix_dirs(env: dict[str, str]) -> list[str]:
    """Host directories the PMIx client needs: the server's directory and the data stores under it."""
    out: list[str] = []
    for key in ("PMIX_SERVER_TMPDIR", "PMIX_DSTORE_21_BASE_PATH", "PMIX_DSTORE_ESH_BASE_PATH"):
        value = env.get(key, "")
        if not value.startswith("/"):
            continue
        path = os.path.normpath(value)
        if path in ("/", "/tmp", "/var/tmp") or any(path.startswith(p + "/") for p in out):
            continue
        if os.path.isdir(path):
            out.append(path)
    return out


def hybrid_edits(spec, host_env: dict[str, str]) -> None:
    """PMIx directories, and the vader single-copy setting when ranks get one user namespace each."""
    from yurt.spec import NS_USER, Mount

    if not is_rank(host_env):
        return
    taken = {m.destination for m in spec.mounts}
    for d in pmix_dirs(host_env):
        if d not in taken:
            spec.mounts.append(Mount(d, "bind", d, ["if-not-visible"], optional=True))
    local = host_env.get("OMPI_COMM_WORLD_LOCAL_SIZE") or host_env.get("SLURM_STEP_TASKS_PER_NODE", "")
    alone = local.strip() == "1"
    if (spec.has(NS_USER) and not alone and SINGLE_COPY not in host_env
            and SINGLE_COPY not in spec.process.env):
        spec.process.env[SINGLE_COPY] = "none"
        spec.annotations[SINGLE_COPY_ANNOTATION] = "none"


def for_shared_userns(spec) -> None:
    """Undo the single-copy setting for ranks that will share one user namespace (``--sharens``)."""
    if spec.annotations.pop(SINGLE_COPY_ANNOTATION, None) is not None:
        spec.process.env.pop(SINGLE_COPY, None)
