"""Rootfs: a directory to pivot into, plus whatever keeps it alive.

Three ways to run a squashfs (SIF partition or plain ``.sqfs``) without
trusting anybody:

* :class:`KernelSquashfs` (caller is real root): a loop device at the
  partition offset, kernel squashfs, ``nosuid,nodev``.  Auto-cleared when the
  mount namespace goes away.
* :class:`FuseSquashfs` (unprivileged): we open ``/dev/fuse`` and mount it
  ourselves inside the user namespace, then hand the fd to ``squashfuse_ll``
  as ``/dev/fd/N``.  The helper runs *outside* the container's mount
  namespace, so when the payload (and anything it left behind) exits, the
  namespace dies, the FUSE connection is aborted and the helper exits on its
  own: no supervisor process, yet nothing is left running.
* :class:`ExtractedSquashfs` (no usable FUSE): unpack once with ``unsquashfs``
  into a node-local cache keyed by the file's identity, atomically.

``prepare()`` runs on the host before any namespace exists; ``attach()`` runs
inside the new mount namespace and returns the directory to use.
"""

from __future__ import annotations

import os
import stat
import struct
import sys

from yurt.errors import ImageError, RuntimeSetupError


class Rootfs:
    description = "rootfs"

    def prepare(self) -> None:
        """Host-side work before any namespace is created."""

    def prepare_in_userns(self) -> None:
        """Work that must happen inside the user namespace but outside the mount namespace."""

    def attach(self, mountpoint: str) -> str:
        """Make the tree available (inside the mount namespace); return its path."""
        raise NotImplementedError

    def abandon(self) -> None:
        """Undo ``prepare`` when the launch fails before ``attach``."""


class DirectoryRootfs(Rootfs):
    def __init__(self, path: str, description: str = "directory") -> None:
        self.path = path
        self.description = description

    def attach(self, mountpoint: str) -> str:
        return self.path


def close_fds_except(keep: set[int]) -> None:
    """Close every fd above stderr but ``keep`` (helpers must not pin the caller's pipes)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def notice(message: str) -> None:
    if os.environ.get("YURT_QUIET") not in ("1", "true", "yes"):
        sys.stderr.write(f"yurt: notice: {message}\n")


# --- kernel squashfs through a loop device (root only) ---------------------

LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LOOP_SET_FD = 0x4C00
LOOP_SET_STATUS64 = 0x4C04
LOOP_CLR_FD = 0x4C01
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
_LOOP_INFO64 = "=QQQQQIIII64s64s32sQQ"


class KernelSquashfs(Rootfs):
    description = "kernel squashfs (loop device)"

    def __init__(self, path: str, offset: int, size: int) -> None:
        self.path, self.offset, self.size = path, offset, size
        self.loopdev: str | None = None
        self._loop_fd: int | None = None

    def prepare(self) -> None:
        import fcntl

        image_fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
            try:
                for _ in range(16):  # another process may grab the free device first
                    number = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
                    dev = f"/dev/loop{number}"
                    loop_fd = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
                    info = struct.pack(_LOOP_INFO64, 0, 0, 0, self.offset, self.size, 0, 0, 0,
                                       LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR, b"", b"", b"", 0, 0)
                    try:
                        fcntl.ioctl(loop_fd, LOOP_CONFIGURE, struct.pack("=II", image_fd, 0) + info + bytes(64))
                    except OSError as e:
                        os.close(loop_fd)
                        if e.errno == 16:  # EBUSY: lost the race, try the next free one
                            continue
                        raise
                    self.loopdev, self._loop_fd = dev, loop_fd
                    return
            finally:
                os.close(ctl)
        finally:
            os.close(image_fd)
        raise RuntimeSetupError("no free loop device for the kernel squashfs mount")

    def attach(self, mountpoint: str) -> str:
        from yurt import syscalls

        assert self.loopdev is not None
        os.mkdir(mountpoint, 0o755)
        syscalls.mount(self.loopdev, mountpoint, "squashfs",
                       syscalls.MS_RDONLY | syscalls.MS_NOSUID | syscalls.MS_NODEV)
        self._release_fd()
        return mountpoint

    def _release_fd(self) -> None:
        if self._loop_fd is not None:
            os.close(self._loop_fd)  # autoclear detaches the device once unmounted
            self._loop_fd = None

    def abandon(self) -> None:
        self._release_fd()


# --- squashfuse, unprivileged -----------------------------------------------

def which(program: str) -> str | None:
    """``shutil.which`` without importing shutil (and fnmatch, re) on the exec path."""
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(directory or ".", program)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def squashfuse_binary() -> str | None:
    return which("squashfuse_ll") or which("squashfuse")


class FuseSquashfs(Rootfs):
    def __init__(self, path: str, offset: int, binary: str, debug: bool = False) -> None:
        self.path, self.offset, self.binary, self.debug = path, offset, binary, debug
        self.description = f"{os.path.basename(binary)} (FUSE)"
        self.fuse_fd = -1
        self.go_fd = -1

    @staticmethod
    def usable() -> str | None:
        """Why FUSE cannot be used here, or None.  Checked before any namespace exists."""
        if not os.path.exists("/dev/fuse"):
            return "/dev/fuse does not exist"
        if not os.access("/dev/fuse", os.R_OK | os.W_OK):
            return "/dev/fuse is not accessible to you"
        return None

    def prepare_in_userns(self) -> None:
        # The kernel wants /dev/fuse opened in the user namespace that mounts
        # it; the helper is forked before the mount namespace exists, so it
        # stays in the host's and the container's death unmounts its filesystem.
        self.fuse_fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(w)
                if os.fork() != 0:  # double fork: the payload must not inherit a child
                    os._exit(0)
                self._helper(r)
            finally:
                os._exit(127)
        os.close(r)
        os.waitpid(pid, 0)
        self.go_fd = w

    def _helper(self, go: int) -> None:
        os.setsid()  # a Ctrl-C aimed at the payload must not kill the filesystem under it
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        if not self.debug:
            os.dup2(devnull, 2)
        close_fds_except({go, self.fuse_fd})
        if os.read(go, 1) != b"g":
            os._exit(0)
        os.set_inheritable(self.fuse_fd, True)
        args = [self.binary, "-f", "-o", f"offset={self.offset}", self.path, f"/dev/fd/{self.fuse_fd}"]
        os.execv(self.binary, args)

    def attach(self, mountpoint: str) -> str:
        from yurt import syscalls

        os.mkdir(mountpoint, 0o755)
        data = (f"fd={self.fuse_fd},rootmode=40000,user_id={os.getuid()},group_id={os.getgid()},"
                "allow_other")
        syscalls.mount("squashfuse", mountpoint, "fuse.squashfuse",
                       syscalls.MS_RDONLY | syscalls.MS_NOSUID | syscalls.MS_NODEV, data)
        os.write(self.go_fd, b"g")
        self._close()
        try:
            os.stat(mountpoint)  # blocks until the helper answers FUSE INIT
        except OSError as e:
            raise RuntimeSetupError(f"{os.path.basename(self.binary)} failed to serve {self.path}: "
                                    f"{e.strerror}", "rerun with --debug to see its output")
        return mountpoint

    def _close(self) -> None:
        for fd in (self.fuse_fd, self.go_fd):
            if fd >= 0:
                os.close(fd)
        self.fuse_fd = self.go_fd = -1

    def abandon(self) -> None:
        self._close()  # the helper reads EOF and exits


# --- unpack once into a node-local cache -----------------------------------

def local_cache_dir() -> str:
    """``$YURT_LOCAL_CACHEDIR``, ``local_cache_dir`` (:mod:`yurt.config`) or ``/var/tmp/yurt-<uid>``:
    node-local, never $HOME (often NFS)."""
    from yurt.config import load

    return private_dir(load().local_cache_dir, "set YURT_LOCAL_CACHEDIR to a private node-local directory")


def private_dir(path: str, hint: str) -> str:
    """``path`` as a directory of ours, mode 0700 (made if missing; never followed through a symlink)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise RuntimeSetupError(f"{path} is not a directory owned by you", hint)
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return path


class ExtractedSquashfs(Rootfs):
    description = "unpacked copy (node-local cache)"

    def __init__(self, path: str, offset: int, reason: str) -> None:
        self.path, self.offset, self.reason = path, offset, reason
        self.dir = ""

    def cache_key(self) -> str:
        import hashlib

        st = os.stat(self.path)
        ident = f"{os.path.realpath(self.path)}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0"
        return hashlib.sha256(f"{ident}{self.offset}".encode()).hexdigest()[:32]

    def prepare(self) -> None:

        root = os.path.join(local_cache_dir(), "unpacked")
        os.makedirs(root, mode=0o700, exist_ok=True)
        final = os.path.join(root, self.cache_key())
        if os.path.isdir(final):
            os.utime(final)  # `yurt cache clean --days N` ages unpacked trees by their last use
        else:
            self._unpack_once(final)
        self.dir = final

    def _unpack_once(self, final: str) -> None:
        """Unpack under a node-local lock: when all the ranks of a node start at once, one unpacks, the rest wait."""
        from yurt.image.squashfs import unsquashfs_extract
        from yurt.store.locks import LocksUnsupported, acquire

        lock_dir = os.path.join(os.path.dirname(os.path.dirname(final)), "locks")
        os.makedirs(lock_dir, mode=0o700, exist_ok=True)
        try:
            # The tree's lock in the store (Store.unpacked_lock), which `yurt cache clean` also takes.
            fd = acquire(os.path.join(lock_dir, f"unpacked-{os.path.basename(final)}.lock"), shared=False,
                         timeout=None, what=f"the unpacking of {os.path.basename(self.path)}")
        except LocksUnsupported:
            fd = None  # each process unpacks; the first rename wins
        try:
            if os.path.isdir(final):  # another process unpacked it while we waited
                return
            notice(f"{self.reason}; unpacking {os.path.basename(self.path)} once into {final}")
            tmp = f"{final}.tmp-{os.getpid()}"
            try:
                unsquashfs_extract(self.path, self.offset, tmp)
                os.rename(tmp, final)
            except OSError:
                if not os.path.isdir(final):  # a concurrent unpack of the same image won: fine
                    raise
            finally:
                if os.path.lexists(tmp):
                    import shutil

                    shutil.rmtree(tmp, ignore_errors=True)
        finally:
            if fd is not None:
                os.close(fd)

    def attach(self, mountpoint: str) -> str:
        return self.dir


def squashfs_rootfs(path: str, offset: int, size: int, *, real_root: bool, unsquash: bool,
                    debug: bool = False) -> Rootfs:
    """Pick and prepare the best way to run a squashfs, falling back with a notice."""
    if unsquash:
        rootfs: Rootfs = ExtractedSquashfs(path, offset, "--unsquash given")
        rootfs.prepare()
        return rootfs
    if real_root and os.path.exists("/dev/loop-control"):
        kernel = KernelSquashfs(path, offset, size)
        try:
            kernel.prepare()
            return kernel
        except OSError as e:
            notice(f"kernel squashfs mount unavailable ({e.strerror}); trying squashfuse")
    binary = squashfuse_binary()
    reason = "squashfuse is not installed" if binary is None else FuseSquashfs.usable()
    if reason is None and binary is not None:
        return FuseSquashfs(path, offset, binary, debug)
    rootfs = ExtractedSquashfs(path, offset, reason or "")
    try:
        rootfs.prepare()
    except OSError as e:
        raise ImageError(f"cannot unpack {path}: {e}")
    return rootfs
