"""Read an image's own files from the host without leaving the image and without following links.

Images are hostile.  ``/.singularity.d/labels.json`` may be a symlink to ``/etc/shadow``, an env
script may be a FIFO (a plain ``open`` would block forever), ``oci-config.json`` may be 100 MB,
and a device node may do something as soon as it is opened.  Every metadata file that yurt reads
from an image tree on the host (a sandbox, a build's tree, the new root before ``pivot_root``) is
read through this module:

* the path is resolved relative to the image root and no symlink is followed anywhere in it:
  ``openat2(RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`` where the kernel
  has it (Linux >= 5.6), else one ``O_NOFOLLOW`` open per component;
* the file is first opened ``O_PATH``, which never opens a device or blocks on a FIFO, checked
  with ``fstat`` to be a regular file within the size limit, and only then reopened for reading
  through ``/proc/self/fd/N``: the inode that was checked is the one that is read;
* at most ``limit`` bytes are read, even if the file grows meanwhile.

A missing file (or a parent that is not a directory) reads as ``None``.  Anything else wrong is
an :class:`UnsafeFile`, an ImageError naming the file and why, which a command turns into one
error line (``yurt inspect`` into a warning).  Callers that want symlinks *inside* the image
followed (``/etc/passwd``) resolve the path first with ``yurt.runtime.paths.resolve_in_root``,
which leaves a path with no symlinks in it, and read that.
"""

from __future__ import annotations

import errno
import os
import stat

from yurt.errors import ImageError

LIMIT = 1 << 20  # per metadata file: more is not metadata
_OPENAT2_FALLBACK = (errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.E2BIG)
_openat2_usable = True  # cleared after the first ENOSYS/EPERM: this kernel or seccomp filter lacks it


class UnsafeFile(ImageError):
    """An image file that yurt refuses to read: a symlink on the way, not a regular file, or too big."""


def components(path: str) -> list[str]:
    """The components of ``path`` relative to the image root, ``..`` clamped at the root (as RESOLVE_IN_ROOT)."""
    out: list[str] = []
    for comp in path.split("/"):
        if comp == "..":
            if out:
                out.pop()
        elif comp and comp != ".":
            out.append(comp)
    return out


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "of an unknown type"


def _label(where: str, shown: str) -> str:
    return f"{where}: {shown}" if where else shown


def _root_fd(root: str | int, where: str) -> tuple[int, bool]:
    """An fd of the image root (the path the user named may be a link: it is followed); FileNotFoundError
    when there is no such directory any more, so the files in it read as absent."""
    if isinstance(root, int):
        return root, False
    try:
        return os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), True
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(errno.ENOENT, "absent")
    except OSError as e:
        raise ImageError(f"cannot open the image {where or root}: {e.strerror}")


def _open_path(root_fd: int, comps: list[str], where: str) -> int:
    """An ``O_PATH`` fd of the last component (itself, never a link's target); FileNotFoundError if absent."""
    global _openat2_usable
    if not comps:
        return os.dup(root_fd)
    if _openat2_usable:
        from yurt import syscalls as sc

        flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
        resolve = sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_SYMLINKS | sc.RESOLVE_NO_MAGICLINKS
        for _ in range(3):  # EAGAIN: a concurrent rename; the kernel asks to retry
            try:
                return sc.openat2(root_fd, "/".join(comps), flags, resolve)
            except OSError as e:
                if e.errno in (errno.ENOENT, errno.ENOTDIR):
                    raise FileNotFoundError(e.errno, "absent")
                if e.errno in _OPENAT2_FALLBACK:
                    _openat2_usable = False
                if e.errno != errno.EAGAIN:
                    break  # ELOOP and the rest: the walk below names the component at fault
    return _walk(root_fd, comps, where)


def _walk(root_fd: int, comps: list[str], where: str) -> int:
    """What openat2 does, one ``O_NOFOLLOW`` component at a time (kernels before 5.6)."""
    current, owned = root_fd, False
    for i, comp in enumerate(comps):
        shown = "/" + "/".join(comps[:i + 1])
        try:
            fd = os.open(comp, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=current)
        except (FileNotFoundError, NotADirectoryError):
            raise FileNotFoundError(errno.ENOENT, "absent")
        except OSError as e:
            raise ImageError(f"{_label(where, shown)}: cannot open: {e.strerror}")
        finally:
            if owned:
                os.close(current)
        current, owned = fd, True
        if i < len(comps) - 1:
            mode = os.fstat(fd).st_mode
            if stat.S_ISLNK(mode):
                os.close(fd)
                raise UnsafeFile(f"{_label(where, shown)} is a symbolic link; yurt does not follow links "
                                 "in image metadata paths")
            if not stat.S_ISDIR(mode):
                os.close(fd)
                raise FileNotFoundError(errno.ENOTDIR, "absent")
    return current


def _opened(root: str | int, path: str, where: str, want_dir: bool, limit: int) -> tuple[int, int] | None:
    """``(fd open for reading, size)`` of the checked file or directory, or None when it is absent."""
    comps = components(path)
    shown = "/" + "/".join(comps)
    try:
        rfd, owned = _root_fd(root, where)
    except FileNotFoundError:
        return None
    try:
        try:
            pfd = _open_path(rfd, comps, where)
        except FileNotFoundError:
            return None
    finally:
        if owned:
            os.close(rfd)
    try:
        st = os.fstat(pfd)
        ok = stat.S_ISDIR(st.st_mode) if want_dir else stat.S_ISREG(st.st_mode)
        if not ok:
            wanted = "a directory" if want_dir else "a regular file"
            raise UnsafeFile(f"{_label(where, shown)} is {_kind(st.st_mode)}, not {wanted}; not read")
        if not want_dir and st.st_size > limit:
            raise UnsafeFile(f"{_label(where, shown)} is {st.st_size} bytes, over the {limit}-byte limit "
                             "for image metadata; not read")
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY | (os.O_DIRECTORY if want_dir else 0)
        try:
            # The inode fstat checked, whatever the path has become since (a magic link, our own fd).
            fd = os.open(f"/proc/self/fd/{pfd}", flags)
        except OSError as e:
            raise ImageError(f"{_label(where, shown)}: cannot open: {e.strerror}")
        return fd, st.st_size
    finally:
        os.close(pfd)


def read_file(root: str | int, path: str, limit: int = LIMIT, *, where: str = "") -> bytes | None:
    """The bytes of the regular file ``path`` inside the image ``root`` (a directory or an fd of one).

    None when it does not exist; UnsafeFile when a symlink is on the way, it is not a regular
    file, or it holds more than ``limit`` bytes.  ``where`` (the image) prefixes messages.
    """
    opened = _opened(root, path, where, False, limit)
    if opened is None:
        return None
    fd, _ = opened
    try:
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as e:
        raise ImageError(f"{_label(where, '/' + '/'.join(components(path)))}: cannot read: {e.strerror}")
    finally:
        os.close(fd)
    if total > limit:
        raise UnsafeFile(f"{_label(where, '/' + '/'.join(components(path)))} grew over the {limit}-byte limit "
                         "for image metadata; not read")
    return b"".join(chunks)


def list_dir(root: str | int, path: str, *, where: str = "") -> list[str] | None:
    """Sorted names in the directory ``path`` inside the image ``root``; None when it does not exist."""
    opened = _opened(root, path, where, True, 0)
    if opened is None:
        return None
    fd, _ = opened
    try:
        return sorted(os.listdir(fd))
    finally:
        os.close(fd)

