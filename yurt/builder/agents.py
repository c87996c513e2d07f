"""Bootstrap agents: the ``Bootstrap:`` header of a stage -> a writable sandbox directory.

Each agent creates ``dest`` (which must not exist yet), owned by the builder:

* ``scratch``: an empty tree (the layout adds the usual directories).
* ``busybox``: the host's static busybox (``$YURT_BUSYBOX``, default ``/bin/busybox``)
  with one symlink per applet, as ``scripts/make-busybox-rootfs`` does.  Downloading
  from ``MirrorURL`` is not possible offline: the host's busybox is used, with a warning.
* ``localimage``: a directory is copied with ``cp -a``; a SIF or a squashfs file is
  unpacked with ``unsquashfs``.
* ``docker``, ``oras``, ``oci``, ``oci-archive``, ``docker-archive``: the image is
  pulled into the cache (:func:`yurt.registry.pull.pull`) and its SIF unpacked.  The
  image's config (Env, Entrypoint, Cmd, WorkingDir) is returned so that the build
  carries it into the result.
* ``debootstrap``: ``debootstrap --variant=minbase``, only as real root.

Image trees are never copied with ``shutil.copytree``: it would read device nodes
(``/dev/zero``) forever.  Commands that write the tree go through the build's
:class:`Runner`, so that with a subuid range they run in the build's user namespace
and keep the image's owners.
"""

from __future__ import annotations

import os
import struct
import sys

from yurt.errors import BuildError, YurtError, warn
from yurt.record import Record

OCI_AGENTS = {"docker": "docker://", "oras": "oras://", "oci": "oci:", "oci-archive": "oci-archive:",
              "docker-archive": "docker-archive:"}
DEFAULT_BUSYBOX = "/bin/busybox"


class Bootstrapped(Record):
    """What a bootstrap produced besides the tree: the OCI config member (Env, Cmd, ...) when any."""

    __slots__ = ("oci_config", "description")
    _defaults = {"oci_config": None, "description": ""}
    oci_config: dict | None
    description: str


def identity(definition, recipe_dir: str, pull_options, mode: str) -> dict:
    """What the bootstrap's result depends on, for the build cache key.

    Registry and OCI sources are pulled (into the cache, so the bootstrap reuses it) and named
    by their manifest digest, local images and the busybox binary by the digest of their
    content; debootstrap by its header (like Docker's ``RUN apt-get``, a mirror's moving
    content is not pinned).  ``mode`` (root, subuid, single) is part of it: it decides who
    owns the files.
    """
    from yurt.builder.cache import file_digest, tree_digest

    agent = definition.bootstrap
    out: dict = {"agent": agent, "from": definition.source, "mode": mode,
                 "header": {k: v for k, v in sorted(definition.header.items()) if k not in ("bootstrap", "from")}}
    try:
        if agent in OCI_AGENTS:
            out["digest"] = _pull(definition, recipe_dir, pull_options)[0].manifest_digest
        elif agent == "localimage":
            source = local_path(definition.source or "", recipe_dir)
            out["digest"] = tree_digest(source) if os.path.isdir(source) else file_digest(source)
        elif agent == "busybox":
            out["digest"] = file_digest(os.environ.get("YURT_BUSYBOX") or DEFAULT_BUSYBOX)
    except OSError as e:
        raise BuildError(f"{definition.filename}:{definition.line}: Bootstrap: {agent}: "
                         f"cannot read {e.filename or definition.source}: {e.strerror}")
    return out


_PULLED: dict[str, tuple] = {}


def _pull(definition, recipe_dir: str, pull_options) -> tuple:
    """``(PullResult, reference)`` of an OCI stage, pulled once per build."""
    from yurt.registry.pull import pull

    ref = oci_reference(definition, recipe_dir)
    if ref not in _PULLED:
        try:
            _PULLED[ref] = (pull(ref, pull_options), ref)
        except YurtError as e:
            raise BuildError(f"{definition.filename}:{definition.line}: Bootstrap: {definition.bootstrap}: {e}")
    return _PULLED[ref]


def bootstrap(definition, dest: str, runner, *, recipe_dir: str, pull_options=None) -> Bootstrapped:
    """Create the sandbox ``dest`` for the stage ``definition`` (see the module docstring)."""
    agent = definition.bootstrap
    if os.path.lexists(dest):
        raise BuildError(f"cannot bootstrap into {dest}: it already exists")
    if agent == "scratch":
        os.mkdir(dest, 0o755)
        return Bootstrapped(description="scratch")
    if agent == "busybox":
        return _busybox(definition, dest)
    if agent == "localimage":
        return _localimage(definition, dest, runner, recipe_dir)
    if agent in OCI_AGENTS:
        return _oci(definition, dest, runner, recipe_dir, pull_options)
    if agent == "debootstrap":
        return _debootstrap(definition, dest)
    raise BuildError(f"{definition.filename}:{definition.line}: Bootstrap: {agent} is not supported by yurt")


# Without real root (a user namespace included), device nodes cannot be made; the runtime binds
# the host's /dev anyway, as Apptainer's rootless builds do.
_BENIGN_CP = "cannot create special file"


def copy_tree(argv: list[str], what: str) -> None:
    """Run a ``cp`` command (errors shown); a device node it may not create (EPERM) is no failure."""
    import subprocess

    from yurt.programs import require

    argv = [require(argv[0], None, BuildError), *argv[1:]]
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace")
    except OSError as e:
        raise BuildError(f"{what}: cannot run {argv[0]}: {e.strerror}")
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    benign = [ln for ln in lines if _BENIGN_CP in ln and "Operation not permitted" in ln]
    others = [ln for ln in lines if ln not in benign]
    for ln in others:
        sys.stderr.write(ln + "\n")
    if proc.returncode != 0 and (others or not benign):
        raise BuildError(f"{what} failed with exit status {proc.returncode}")


# -- busybox ------------------------------------------------------------------------------------


def _is_static_elf(path: str) -> bool:
    """Whether ``path`` is an ELF executable without a program interpreter (statically linked)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 52 or head[:4] != b"\x7fELF":
            return False
        is64, endian = head[4] == 2, "<" if head[5] == 1 else ">"
        if is64:
            phoff, = struct.unpack_from(endian + "Q", head, 32)
            phentsize, phnum = struct.unpack_from(endian + "HH", head, 54)
        else:
            phoff, = struct.unpack_from(endian + "I", head, 28)
            phentsize, phnum = struct.unpack_from(endian + "HH", head, 42)
        for i in range(min(phnum, 512)):
            f.seek(phoff + i * phentsize)
            entry = f.read(4)
            if len(entry) == 4 and struct.unpack(endian + "I", entry)[0] == 3:  # PT_INTERP
                return False
    return True


def _busybox(definition, dest: str) -> Bootstrapped:
    import subprocess

    busybox = os.environ.get("YURT_BUSYBOX") or DEFAULT_BUSYBOX
    if definition.header.get("mirrorurl"):
        warn(f"Bootstrap: busybox: MirrorURL {definition.header['mirrorurl']} is not downloaded (no network "
             f"access is assumed); using the host's {busybox}")
    if not os.access(busybox, os.X_OK):
        raise BuildError(f"Bootstrap: busybox needs a static busybox at {busybox}",
                         "apt-get install busybox-static, or set YURT_BUSYBOX")
    if not _is_static_elf(busybox):
        raise BuildError(f"{busybox} is not a statically linked executable; it would not run in the image",
                         "install busybox-static, or set YURT_BUSYBOX")
    try:
        applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True,
                                 stdin=subprocess.DEVNULL).stdout.split()
    except (OSError, subprocess.CalledProcessError) as e:
        raise BuildError(f"cannot list the applets of {busybox}: {e}")
    os.mkdir(dest, 0o755)
    for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc"):
        os.makedirs(os.path.join(dest, d), 0o755, exist_ok=True)
    target = os.path.join(dest, "bin", "busybox")
    with open(busybox, "rb") as src, open(target, "wb") as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)
    os.chmod(target, 0o755)
    for applet in applets:
        if applet != "busybox" and "/" not in applet and not os.path.lexists(os.path.join(dest, "bin", applet)):
            os.symlink("busybox", os.path.join(dest, "bin", applet))
    os.symlink("../../bin/busybox", os.path.join(dest, "usr", "bin", "env"))
    passwd = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    for name, text in (("passwd", passwd), ("group", "root:x:0:\nnogroup:x:65534:\n")):
        with open(os.path.join(dest, "etc", name), "w") as f:
            f.write(text)
    return Bootstrapped(description=f"busybox from {busybox}")


# -- local images ------------------------------------------------------------------------------


def local_path(path: str, recipe_dir: str) -> str:
    """A local source path: absolute, else relative to the current directory, else to the recipe's."""
    if os.path.isabs(path) or os.path.lexists(path):
        return os.path.abspath(path)
    beside = os.path.join(recipe_dir, path)
    return beside if os.path.lexists(beside) else os.path.abspath(path)


def _localimage(definition, dest: str, runner, recipe_dir: str) -> Bootstrapped:
    source = local_path(definition.source or "", recipe_dir)
    if os.path.isdir(source):
        runner.call(copy_tree, ["cp", "-a", "--", source, dest], f"copying {source}")
        return Bootstrapped(description=f"copy of {source}")
    from yurt.image.source import open_image

    try:
        image = open_image(source)
    except YurtError as e:
        raise BuildError(f"{definition.filename}:{definition.line}: Bootstrap: localimage: {e}")
    return _unpack(image, source, dest, runner)


def _unpack(image, name: str, dest: str, runner) -> Bootstrapped:
    if image.kind not in ("sif", "squashfs"):
        raise BuildError(f"{name} is not a SIF, squashfs or directory image")
    from yurt.image.squashfs import unsquashfs_extract

    runner.call(unsquashfs_extract, image.path, image.offset, dest, image_fd=image.fd)
    config = image.oci_config()
    return Bootstrapped(oci_config=config if isinstance(config, dict) else None, description=f"unpacked {name}")


# -- registries and OCI layouts ----------------------------------------------------------------


def oci_reference(definition, recipe_dir: str) -> str:
    """The pull reference of an OCI-based stage (``From:`` with the agent's scheme)."""
    agent = definition.bootstrap
    scheme = OCI_AGENTS[agent]
    source = (definition.source or "").strip()
    if source.startswith(scheme):
        source = source[len(scheme):]
    if agent == "docker":
        source = source.lstrip("/")
        registry = definition.header.get("registry", "").strip().rstrip("/")
        namespace = definition.header.get("namespace", "").strip().strip("/")
        first = source.split("/", 1)[0]
        has_host = "/" in source and ("." in first or ":" in first or first == "localhost")
        if namespace and not has_host and "/" not in source:
            source = f"{namespace}/{source}"
        if registry and not has_host:
            source = f"{registry}/{source}"
    elif agent in ("oci", "oci-archive", "docker-archive"):
        path, sep, rest = source.partition(":")
        source = local_path(path, recipe_dir) + sep + rest
    return scheme + source


def _oci(definition, dest: str, runner, recipe_dir: str, pull_options) -> Bootstrapped:
    from yurt.image.source import open_image

    result, ref = _pull(definition, recipe_dir, pull_options)
    try:
        image = open_image(str(result.sif))
    except YurtError as e:
        raise BuildError(f"{definition.filename}:{definition.line}: Bootstrap: {definition.bootstrap}: {e}")
    out = _unpack(image, ref, dest, runner)
    out.description = f"{ref} ({result.manifest_digest})"
    return out


# -- debootstrap --------------------------------------------------------------------------------


def _debootstrap(definition, dest: str) -> Bootstrapped:
    import subprocess

    if os.geteuid() != 0:
        raise BuildError("Bootstrap: debootstrap needs root (use a docker/localimage bootstrap, or build as root)")
    from yurt.programs import find

    tool = find("debootstrap")
    if tool is None:
        raise BuildError("Bootstrap: debootstrap needs the debootstrap program", "apt-get install debootstrap")
    version = definition.header["osversion"].strip()
    mirror = definition.header["mirrorurl"].strip()
    cmd = [tool, "--variant=minbase"]
    include = [p for p in definition.header.get("include", "").replace(",", " ").split() if p]
    if include:
        cmd.append("--include=" + ",".join(include))
    cmd += [version, dest, mirror]
    sys.stderr.write(f"yurt: build: {' '.join(cmd)}\n")
    sys.stderr.flush()
    rc = subprocess.run(cmd, stdin=subprocess.DEVNULL).returncode
    if rc != 0:
        raise BuildError(f"debootstrap {version} from {mirror} failed with exit status {rc}")
    return Bootstrapped(description=f"debootstrap {version} from {mirror}")
