"""Durable, all-or-nothing file writes: the one place that knows the temp + fsync + rename dance.

Caches, credential files and images must never be seen half-written, even
after a crash: data goes to a temporary file in the same directory, is
fsynced, renamed over the target, and the directory is fsynced so the rename
itself survives.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or directory; file systems that cannot fsync directories are fine."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EROFS, errno.EBADF):
            raise
    finally:
        os.close(fd)


@contextmanager
def _replacing(path: Path, mode: int) -> Iterator[BinaryIO]:
    """A temporary file beside ``path`` (mode ``mode`` from its first byte) to fill; on success it is
    fsynced and renamed over ``path``, and the directory fsynced; on any error it is removed."""
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # created 0600
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_path(path.parent)


def write_bytes(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> Path:
    """Replace ``path`` with ``data`` atomically; the file has ``mode`` from its first byte."""
    path = Path(path)
    with _replacing(path, mode) as f:
        f.write(data)
    return path


def copy_file(src: str | os.PathLike[str], path: str | os.PathLike[str], mode: int = 0o644) -> Path:
    """Replace ``path`` with a copy of ``src`` atomically (``mode`` minus the umask, as open(2) gives)."""
    import shutil

    path = Path(path)
    umask = os.umask(0)
    os.umask(umask)
    with open(src, "rb") as fin, _replacing(path, mode & ~umask) as f:
        shutil.copyfileobj(fin, f, 1 << 20)
    return path
