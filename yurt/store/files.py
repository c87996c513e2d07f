"""Digest names and file operations the cache's store (:mod:`yurt.store.cache`) and its cleaning
(:mod:`yurt.store.cleaning`) share.

:func:`parse_digest` is the one gate a digest passes before it becomes a file name in the cache
(it refuses ``../``, upper case and wrong lengths); the rest create private directories and
remove files and whole trees, read-only ones included (unpacked images have them), without
following symbolic links.  They live here, below both users, so that neither imports the other.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from yurt.errors import ImageError

_ALGORITHMS = {"sha256": 64, "sha512": 128}
_HEX = frozenset("0123456789abcdef")


def parse_digest(digest: str) -> tuple[str, str]:
    """``"sha256:<hex>"`` -> ``("sha256", "<hex>")``; anything else (``../``, upper case) is refused."""
    algorithm, sep, hexpart = str(digest).partition(":")
    if not sep or _ALGORITHMS.get(algorithm) != len(hexpart) or not _HEX.issuperset(hexpart):
        raise ImageError(f"invalid digest {digest!r}", "expected sha256:<64 lower-case hex digits>")
    return algorithm, hexpart


def _mkdirs(path: Path) -> Path:
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def force_rmtree(path: str | os.PathLike[str]) -> None:
    """``rm -rf`` that also gets through read-only directories (unpacked images have them)."""
    path = os.fspath(path)

    def writable(p: str) -> None:
        try:
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o700 != 0o700:
                os.chmod(p, stat.S_IMODE(st.st_mode) | 0o700)
        except OSError:
            pass

    writable(path)
    for dirpath, dirnames, _ in os.walk(path):
        for name in dirnames:  # before os.walk descends into them
            writable(os.path.join(dirpath, name))
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        shutil.rmtree(path)  # once more, to raise with the reason


def _unlink(path: str | os.PathLike[str]) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _remove(path: str | os.PathLike[str]) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        force_rmtree(path)
    else:
        _unlink(path)
