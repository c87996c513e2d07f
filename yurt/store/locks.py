"""Advisory file locks shared by every yurt process on a machine (and across NFS clients).

``flock(2)`` on a small lock file: the kernel drops the lock when the holder's
descriptor closes, so a process that is killed (SIGKILL, OOM, node job end)
never leaves a stale lock behind.  Lock files may be deleted by whoever holds
them (``yurt cache clean`` does); :func:`file_lock` then notices that the file
it locked is no longer the one at the path and locks again.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager

from yurt.errors import RuntimeSetupError, YurtError


class LockTimeout(YurtError):
    """Another process held the lock for longer than we were willing to wait."""


class LocksUnsupported(RuntimeSetupError):
    """The filesystem holding the lock file does not implement ``flock``."""


_UNSUPPORTED = {errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK}


@contextmanager
def file_lock(path: str | os.PathLike[str], *, shared: bool = False, timeout: float | None = None,
              what: str | None = None) -> Iterator[int]:
    """Hold ``flock`` on ``path`` (created 0600 if missing) for the ``with`` block; yield its fd.

    ``timeout``: ``None`` waits for as long as it takes, ``0`` does not wait at
    all, otherwise seconds; when it runs out, :class:`LockTimeout` says
    "another yurt is using <what>; waited N s".  Descriptors are close-on-exec.
    """
    fd = acquire(path, shared=shared, timeout=timeout, what=what)
    try:
        yield fd
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def acquire(path: str | os.PathLike[str], *, shared: bool = False, timeout: float | None = None,
            what: str | None = None) -> int:
    """Like :func:`file_lock` but returns the locked fd; ``os.close`` it to release."""
    path = os.fspath(path)
    deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
    operation = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    while True:
        fd = _open_lock_file(path)
        try:
            _flock(fd, operation, deadline, timeout, path, what)
            # Whoever deleted the lock file held it: our inode is orphaned, lock the new one.
            if _same_file(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _open_lock_file(path: str) -> int:
    """The lock file, opened without following a symbolic link and without blocking (a FIFO planted in its
    place would otherwise hang the open); anything but a regular file of ours is removed and replaced."""
    for _ in range(3):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY,
                         0o600)
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.EACCES):
                raise
            why = e.strerror
        else:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid():
                return fd
            os.close(fd)
            why = "not a regular file of yours"
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                os.rmdir(path)
            else:
                os.unlink(path)
        except OSError as e:
            raise RuntimeSetupError(f"lock file {path} cannot be used ({why}) nor removed: {e.strerror}",
                                    "remove it, or point yurt's cache or runtime directory elsewhere")
    raise RuntimeSetupError(f"lock file {path} keeps being replaced", "check who else writes to its directory")


def try_lock(path: str | os.PathLike[str], *, shared: bool = False) -> int | None:
    """Take the lock without waiting: a locked fd to ``os.close`` when done, or ``None`` if it is held."""
    try:
        return acquire(path, shared=shared, timeout=0)
    except LockTimeout:
        return None


def _flock(fd: int, operation: int, deadline: float | None, timeout: float | None, path: str,
           what: str | None) -> None:
    try:
        if deadline is None:
            fcntl.flock(fd, operation)
            return
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, operation | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                raise LockTimeout(f"another yurt is using {what or os.path.basename(path)}; waited {timeout:g} s",
                                  f"lock file {path}")
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.1)
    except OSError as e:
        if e.errno in _UNSUPPORTED:
            raise LocksUnsupported(f"file locks are not supported where {path} lives: {e.strerror}",
                                   "set YURT_CACHEDIR to a local filesystem")
        raise


def _same_file(fd: int, path: str) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)
