"""Rootfs: a directory to pivot into, plus whatever keeps it alive.

Every kind works from the descriptor :func:`yurt.image.source.open_image` opened (and the site policy
was checked on), never by opening the image's path again, so a symbolic link swapped meanwhile cannot
change what runs:

* :class:`DirectoryRootfs`: a directory image is bound into the session from the path the kernel
  reports for the descriptor, and used only when the bound tree is that very directory (same device
  and inode; a bind cannot take the descriptor itself once the mount namespace is new).
* :class:`KernelSquashfs` (caller is real root): a loop device on the descriptor at the
  partition offset, kernel squashfs, ``nosuid,nodev``.  Auto-cleared when the mount namespace goes
  away.
* :class:`FuseSquashfs` (unprivileged): we open ``/dev/fuse`` and mount it ourselves inside the user
  namespace, then hand the fd to ``squashfuse_ll`` as ``/dev/fd/N``, and the image as another
  inherited ``/dev/fd/M``.  The helper runs *outside* the container's mount namespace, so when the
  payload (and anything it left behind) exits, the namespace dies, the FUSE connection is aborted and
  the helper exits on its own: no supervisor process, yet nothing is left running.
* :class:`ExtractedSquashfs` (``--unsquash``, or no usable FUSE): without a site policy, unpack once
  with ``unsquashfs`` into a node-local cache keyed by the file's identity, atomically, under a lock
  (a node's MPI ranks share one copy).  Under a policy that cache is not trusted (the user can edit
  it): the image is unpacked for this run only, into a tmpfs inside the container's mount namespace,
  where nothing outside can reach it and from which nothing is left behind.

Helper programs come from :mod:`yurt.programs` (never ``PATH`` under a policy).
``prepare()`` runs on the host before any namespace exists; ``attach()`` runs inside the new mount
namespace and returns the directory to use.
"""

from __future__ import annotations

import os
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
    """A directory image; with ``fd`` (its open descriptor) the directory is bound from that, checked."""

    def __init__(self, path: str, description: str = "directory", fd: int | None = None) -> None:
        self.path = path
        self.description = description
        self.fd = fd
        self.source = os.readlink(f"/proc/self/fd/{fd}") if fd is not None else path

    def attach(self, mountpoint: str) -> str:
        if self.fd is None:
            return self.path
        from yurt import syscalls

        os.mkdir(mountpoint, 0o755)
        syscalls.mount(self.source, mountpoint, None, syscalls.MS_BIND | syscalls.MS_REC)
        got, want = os.stat(mountpoint), os.fstat(self.fd)
        if (got.st_dev, got.st_ino) != (want.st_dev, want.st_ino):
            raise RuntimeSetupError(f"image directory {self.path} was replaced while the container was starting",
                                    "try again; if it keeps happening, something is renaming it")
        return mountpoint


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

    def __init__(self, path: str, offset: int, size: int, fd: int | None = None) -> None:
        self.path, self.offset, self.size, self.fd = path, offset, size, fd
        self.loopdev: str | None = None
        self._loop_fd: int | None = None

    def prepare(self) -> None:
        import fcntl

        image_fd = os.dup(self.fd) if self.fd is not None else os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
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

def squashfuse_binary() -> str | None:
    from yurt import programs

    return programs.find("squashfuse_ll") or programs.find("squashfuse")


class FuseSquashfs(Rootfs):
    def __init__(self, path: str, offset: int, binary: str, debug: bool = False, fd: int | None = None) -> None:
        from yurt.programs import helper_env

        self.path, self.offset, self.binary, self.debug = path, offset, binary, debug
        self.description = f"{os.path.basename(binary)} (FUSE)"
        self.image_fd = fd if fd is not None else os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.env = helper_env()  # worked out here: the helper's child must not load the configuration
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
        close_fds_except({go, self.fuse_fd, self.image_fd})
        if os.read(go, 1) != b"g":
            os._exit(0)
        os.set_inheritable(self.fuse_fd, True)
        os.set_inheritable(self.image_fd, True)  # the image it serves: the file that was checked, not a path
        args = [self.binary, "-f", "-o", f"offset={self.offset}", f"/dev/fd/{self.image_fd}",
                f"/dev/fd/{self.fuse_fd}"]
        os.execve(self.binary, args, os.environ if self.env is None else self.env)

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


# --- unpack: once per node into a shared cache, or privately per run under a site policy -----

class ExtractedSquashfs(Rootfs):
    """``unsquashfs`` the image: into the node-local cache (shared, once per node), or with ``private``
    (a site policy: the user can write that cache) into a tmpfs of this container's mount namespace."""

    def __init__(self, path: str, offset: int, reason: str, fd: int | None = None, private: bool = False) -> None:
        self.path, self.offset, self.reason, self.private = path, offset, reason, private
        self.fd = fd if fd is not None else os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.description = ("unpacked copy (private to this run: site policy)" if private
                            else "unpacked copy (node-local cache)")
        self.dir = ""

    def cache_key(self) -> str:
        import hashlib

        st = os.fstat(self.fd)
        real = os.readlink(f"/proc/self/fd/{self.fd}")
        ident = f"{real}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0"
        return hashlib.sha256(f"{ident}{self.offset}".encode()).hexdigest()[:32]

    def prepare(self) -> None:
        from yurt.errors import ImageError
        from yurt.programs import require

        require("unsquashfs", "install squashfs-tools", ImageError)  # fail here, before any namespace
        if self.private:
            notice(f"{self.reason}; unpacking {os.path.basename(self.path)} for this run only (under the site "
                   "policy the shared node-local copy is not trusted)")
            return
        from yurt.store.userdir import local_cache_dir

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
                unsquashfs_extract(self.path, self.offset, tmp, image_fd=self.fd)
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
        if not self.private:
            return self.dir
        from yurt import syscalls
        from yurt.image.squashfs import unsquashfs_into

        os.mkdir(mountpoint, 0o755)
        syscalls.mount("tmpfs", mountpoint, "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV, "mode=0755")
        unsquashfs_into(self.fd, self.offset, mountpoint, what=self.path)
        return mountpoint


def squashfs_rootfs(path: str, offset: int, size: int, *, real_root: bool, unsquash: bool,
                    debug: bool = False, fd: int | None = None) -> Rootfs:
    """Pick and prepare the best way to run a squashfs (``fd``: the image opened and checked), falling back
    with a notice."""
    from yurt.programs import policy_in_force

    private = policy_in_force()
    if unsquash:
        rootfs: Rootfs = ExtractedSquashfs(path, offset, "--unsquash given", fd, private)
        rootfs.prepare()
        return rootfs
    if real_root and os.path.exists("/dev/loop-control"):
        kernel = KernelSquashfs(path, offset, size, fd)
        try:
            kernel.prepare()
            return kernel
        except OSError as e:
            notice(f"kernel squashfs mount unavailable ({e.strerror}); trying squashfuse")
    binary = squashfuse_binary()
    if binary is None:
        reason = "squashfuse is not installed" + (" in the site's helper directories" if private else "")
    else:
        reason = FuseSquashfs.usable()
    if reason is None and binary is not None:
        return FuseSquashfs(path, offset, binary, debug, fd)
    rootfs = ExtractedSquashfs(path, offset, reason or "", fd, private)
    try:
        rootfs.prepare()
    except OSError as e:
        raise ImageError(f"cannot unpack {path}: {e}")
    return rootfs
