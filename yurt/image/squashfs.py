"""Thin, careful wrappers around squashfs-tools (mksquashfs / unsquashfs 4.5+).

We shell out rather than reimplementing squashfs: the tools are on every HPC system that runs
containers, they are fast and multithreaded, and their output is what kernels and squashfuse
mount.  What this module adds is policy: CPU allocation respected, reproducible timestamps,
unprivileged extraction that tolerates device nodes but nothing worse, bounded reads from
hostile images, and one-line ImageErrors instead of tool noise.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Sequence

from yurt.errors import ImageError

COMPRESSIONS = ("gzip", "zstd", "lz4", "xz", "lzo")
#: zstd at level 3 squashes a Debian tree about 10x faster than gzip (mksquashfs's gzip is single-stream
#: per block and slow) for the same size, and is what ``yurt pull`` writes; ``--compression gzip`` remains
#: for kernels and squashfuse builds without zstd (Linux < 4.14).
DEFAULT_COMPRESSION = "zstd"
ZSTD_LEVEL = 3
_INSTALL_HINT = "install squashfs-tools"
# unsquashfs reports these as non-fatal (exit 2) when run without privileges; they lose no data
# an unprivileged container could use (the runtime bind-mounts the host's /dev anyway).  As root
# in a user namespace (a subuid build, yurt itself in a rootless container) unsquashfs believes it
# is superuser and tries mknod, which the kernel refuses with EPERM: the node is skipped all the
# same.  Any other reason (no space, I/O error) stays an error.
_BENIGN_EXTRACT_ERRORS = re.compile(
    r"because you're not superuser|could not create (character|block) device"
    r"|failed to create (character|block) device .*, because Operation not permitted$"
    r"|xattr|extended attribute",
    re.IGNORECASE,
)


def _tool(name: str) -> str:
    from yurt.programs import require

    return require(name, _INSTALL_HINT, ImageError)


def _env(base: dict[str, str] | None = None) -> dict[str, str] | None:
    """The tools' environment: ours (or ``base``), without ``LD_*`` under a site policy (:mod:`yurt.programs`)."""
    from yurt.programs import helper_env

    return helper_env(base) or base


def default_processors() -> int:
    """Threads for mksquashfs/tar2sqfs: the CPUs this job may use (the affinity mask, capped by
    Slurm's per-node allocation), capped by the site's ``squashfs_threads`` (:mod:`yurt.config`)."""
    return thread_count(None)


def thread_count(requested: int | None) -> int:
    """``requested`` threads (None: every CPU this job may use), within the ``squashfs_threads`` limit."""
    from yurt.config import load

    n = _job_cpus() if requested is None else int(requested)
    return load().thread_limit(n) if n >= 1 else n


def _job_cpus() -> int:
    """The CPUs this job may use: the affinity mask, capped by Slurm's allocation and the cgroup's CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_ON_NODE", "")
    if slurm.isdigit() and 0 < int(slurm) < n:
        n = int(slurm)
    quota = cgroup_cpu_quota()
    if quota is not None and quota < n:
        n = quota
    return max(n, 1)


def cgroup_cpu_quota(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> int | None:
    """Whole CPUs allowed by the CFS quota of our cgroup or an ancestor (v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us``/``cpu.cfs_period_us``), rounded up; None when there is no quota."""
    try:
        with open(proc_cgroup, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    best: int | None = None
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        names = controllers.split(",") if controllers else []
        if controllers == "" and line.startswith("0::"):
            unified = os.path.exists(os.path.join(root, "cgroup.controllers"))
            bases = [root if unified else os.path.join(root, "unified")]
            v2 = True
        elif "cpu" in names:
            bases = [os.path.join(root, controllers), os.path.join(root, "cpu")]
            v2 = False
        else:
            continue
        for base in bases:
            if not os.path.isdir(base):
                continue
            parts = [p for p in path.split("/") if p]
            for depth in range(len(parts), -1, -1):
                directory = os.path.join(base, *parts[:depth])
                quota = _read_quota(directory, v2)
                if quota is not None and (best is None or quota < best):
                    best = quota
            break
    return best


def _read_quota(directory: str, v2: bool) -> int | None:
    try:
        if v2:
            with open(os.path.join(directory, "cpu.max"), encoding="utf-8") as f:
                quota_text, _, period_text = f.read().strip().partition(" ")
        else:
            with open(os.path.join(directory, "cpu.cfs_quota_us"), encoding="utf-8") as f:
                quota_text = f.read().strip()
            with open(os.path.join(directory, "cpu.cfs_period_us"), encoding="utf-8") as f:
                period_text = f.read().strip()
        quota, period = int(quota_text), int(period_text)
    except (OSError, ValueError):
        return None
    if quota <= 0 or period <= 0:
        return None
    return max(1, -(-quota // period))


def _last_line(text: str) -> str:
    """The tool's last message line, ignoring a usage dump (printed after "invalid option")."""
    text = text.split("SYNTAX:", 1)[0]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "no error message"


def mksquashfs(
    src_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    compression: str = DEFAULT_COMPRESSION,
    processors: int | None = None,
    extra_args: Sequence[str] = (),
    reproducible_epoch: int | None = None,
    all_root: bool = False,
) -> None:
    """Squash ``src_dir`` into a new squashfs at ``out_path`` (overwritten: -noappend).

    With ``reproducible_epoch`` the superblock time and every inode time are pinned to it, so
    the same tree gives the same bytes (input is sorted by mksquashfs already).
    """
    if compression not in COMPRESSIONS:
        choices = ", ".join(COMPRESSIONS)
        raise ImageError(f"unknown squashfs compression {compression!r}", f"use one of: {choices}")
    src_dir, out_path = os.fspath(src_dir), os.fspath(out_path)
    if not os.path.isdir(src_dir):
        raise ImageError(f"cannot squash {src_dir}: not a directory")
    nproc = thread_count(processors)
    if nproc < 1:
        raise ImageError(f"mksquashfs needs at least one processor, got {nproc}")
    if "-comp" in extra_args:  # `--mksquashfs-args "-comp gzip"` (Apptainer's way to choose) wins
        i = list(extra_args).index("-comp")
        if i + 1 >= len(extra_args) or extra_args[i + 1] not in COMPRESSIONS:
            raise ImageError("--mksquashfs-args: -comp needs one of " + ", ".join(COMPRESSIONS))
        compression, extra_args = extra_args[i + 1], [*extra_args[:i], *extra_args[i + 2:]]
    cmd = [
        _tool("mksquashfs"), src_dir, out_path,
        "-noappend", "-comp", compression, "-processors", str(nproc), "-quiet", "-no-progress",
    ]
    env = None
    if reproducible_epoch is not None:
        epoch = str(int(reproducible_epoch))
        cmd += ["-mkfs-time", epoch, "-all-time", epoch]
        # mksquashfs 4.5 refuses time options together with SOURCE_DATE_EPOCH in its environment.
        env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    if all_root:
        cmd.append("-all-root")
    if compression == "zstd" and "-Xcompression-level" not in extra_args:
        cmd += ["-Xcompression-level", str(ZSTD_LEVEL)]  # mksquashfs's own default (15) is slow
    cmd += list(extra_args)
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace", env=_env(env))
    except OSError as e:
        raise ImageError(f"cannot run mksquashfs: {e.strerror}", _INSTALL_HINT)
    if proc.returncode != 0:
        detail = re.sub(r"^\S*mksquashfs: ", "", _last_line(proc.stderr + proc.stdout))
        raise ImageError(f"mksquashfs failed: {detail}")


def _unsquashfs_base(offset: int) -> list[str]:
    if offset < 0:
        raise ImageError(f"invalid squashfs offset {offset}")
    return [_tool("unsquashfs"), "-no-progress", "-o", str(int(offset))]


def _xattr_flags() -> list[str]:
    # Only root can set trusted.*/security.* xattrs; asking for user.* keeps the rest working.
    return [] if os.geteuid() == 0 else ["-user-xattrs"]


def unsquashfs_extract(
    image_path: str | os.PathLike[str], offset: int, dest_dir: str | os.PathLike[str], *,
    image_fd: int | None = None,
) -> None:
    """Extract the squashfs at byte ``offset`` of ``image_path`` into the new ``dest_dir``.

    With ``image_fd`` (the image already open) unsquashfs reads that descriptor, never the path.
    Works unprivileged, and as root in a user namespace: device nodes that cannot be created
    are skipped (exit status 2 with only such messages), any other error fails.  Extraction
    goes to a temporary sibling that is renamed into place, so ``dest_dir`` never holds a
    partial tree.
    """
    image_path, dest_dir = os.fspath(image_path), os.fspath(dest_dir)
    if os.path.lexists(dest_dir):
        raise ImageError(f"cannot extract into {dest_dir}: it already exists")
    parent = os.path.dirname(os.path.abspath(dest_dir))
    cmd = _unsquashfs_base(offset)
    try:
        work = _mkdtemp(parent, os.path.basename(dest_dir))
    except OSError as e:
        raise ImageError(f"cannot extract into {dest_dir}: {e.strerror}")
    target = os.path.join(work, "rootfs")
    try:
        _run_unsquashfs(cmd + ["-d", target], image_path, image_fd)
        if not os.path.isdir(target):
            raise ImageError(f"cannot extract squashfs from {image_path}: unsquashfs made no tree")
        os.rename(target, dest_dir)
    except OSError as e:
        raise ImageError(f"cannot extract into {dest_dir}: {e.strerror}")
    finally:
        remove_tree(work)


def unsquashfs_into(image_fd: int, offset: int, dest_dir: str, *, what: str) -> None:
    """Extract the squashfs at ``offset`` of the open ``image_fd`` into the existing, empty ``dest_dir``
    (a private tmpfs: nothing else can see it, so no temporary and rename are needed)."""
    _run_unsquashfs(_unsquashfs_base(offset) + ["-f", "-d", dest_dir], what, image_fd)


def _run_unsquashfs(cmd: list[str], image_path: str, image_fd: int | None) -> None:
    """``cmd IMAGE`` (IMAGE: ``/proc/self/fd/N`` of ``image_fd`` when given); device nodes that cannot be
    made are no failure."""
    source = image_path if image_fd is None else f"/proc/self/fd/{image_fd}"
    cmd = cmd + _xattr_flags() + [source]
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, errors="replace", env=_env(),
                              pass_fds=() if image_fd is None else (image_fd,))
    except OSError as e:
        raise ImageError(f"cannot run unsquashfs: {e.strerror}", _INSTALL_HINT)
    problems = [ln.strip() for ln in proc.stderr.splitlines()
                if ln.strip() and not _BENIGN_EXTRACT_ERRORS.search(ln)]
    if proc.returncode not in (0, 2) or (proc.returncode == 2 and problems):
        detail = problems[-1] if problems else _last_line(proc.stderr)
        raise ImageError(f"cannot extract squashfs from {image_path}: {detail}")


def _mkdtemp(parent: str, base: str) -> str:
    path = os.path.join(parent, f".{base}.tmp-{os.urandom(6).hex()}")
    os.mkdir(path, 0o700)
    return path


def remove_tree(path: str) -> None:
    """rm -rf that also copes with the read-only directories an image may contain."""
    if not os.path.lexists(path):
        return
    if os.path.isdir(path) and not os.path.islink(path):
        for root, dirs, _files in os.walk(path):
            for d in dirs:
                child = os.path.join(root, d)
                if not os.path.islink(child):
                    try:
                        os.chmod(child, 0o700)  # so os.walk and rmtree can enter and empty it
                    except OSError:
                        pass
        shutil.rmtree(path, ignore_errors=True)
    else:
        os.unlink(path)


def unsquashfs_cat(
    image_path: str | os.PathLike[str], offset: int, inner_path: str, *, limit: int = 1 << 20,
    timeout: float = 60.0,
) -> bytes | None:
    """Content of one regular file inside the squashfs, or None if it is absent or not a file.

    Output is read up to ``limit`` bytes; larger files raise ImageError instead of filling
    memory (a hostile image can hold a decompression bomb).
    """
    cmd = _unsquashfs_base(offset) + ["-cat", os.fspath(image_path), inner_path]
    data, rc = _bounded_run(cmd, limit, timeout, what=f"{inner_path} in {os.fspath(image_path)}")
    return data if rc == 0 else None


def unsquashfs_list(
    image_path: str | os.PathLike[str], offset: int, inner_dir: str, *, timeout: float = 60.0
) -> list[str]:
    """Absolute paths of the files under ``inner_dir`` inside the squashfs (empty if none)."""
    cmd = _unsquashfs_base(offset) + ["-d", "", "-lc", os.fspath(image_path), inner_dir]
    data, rc = _bounded_run(cmd, 1 << 20, timeout, what=f"listing of {inner_dir}")
    if rc != 0:
        return []
    return [ln for ln in data.decode("utf-8", "replace").splitlines() if ln.startswith("/")]


def _bounded_run(cmd: list[str], limit: int, timeout: float, what: str) -> tuple[bytes, int]:
    """Run a tool, keep at most ``limit`` bytes of stdout, kill it if it overruns or hangs."""
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=_env())
    except OSError as e:
        raise ImageError(f"cannot run {os.path.basename(cmd[0])}: {e.strerror}", _INSTALL_HINT)
    assert proc.stdout is not None
    chunks: list[bytes] = []
    total = 0
    timer = threading.Timer(timeout, proc.kill)  # a hostile image must not hang us
    timer.start()
    try:
        while True:
            chunk = proc.stdout.read1(1 << 16)  # type: ignore[attr-defined]
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise ImageError(f"{what} is larger than {limit} bytes; refusing to read it")
            chunks.append(chunk)
        rc = proc.wait()
        if not timer.is_alive() and rc < 0:
            raise ImageError(f"reading {what} timed out after {timeout:.0f}s")
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    return b"".join(chunks), rc
