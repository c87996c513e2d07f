"""Private in-memory copies of files, verified against a digest: what runs under a site policy.

Under a site policy the user's image cache is not trusted (they can replace any blob or SIF in it), so
an image from a registry or a local OCI source runs from anonymous memory files instead
(:mod:`yurt.registry.private`): :func:`verified_copy` copies a blob into a new ``memfd`` and computes
its digest from the very bytes it wrote there, so what was verified is exactly what is used; once
full, a memory file is sealed (:func:`seal`: no write, grow or shrink, through any descriptor), so
not even a descriptor reopened through ``/proc`` can change it.

A memory file has no name in any directory: the only ways to it are this process's descriptors
(``close-on-exec``; handed to helpers explicitly) and, for processes of the same user,
``/proc/PID/fd``, which yurt cannot close (the user can also ptrace their own processes) and which
the sealing makes read-only.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat

from yurt.errors import ImageError
from yurt.store.files import parse_digest

_CHUNK = 1 << 20
_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


class DigestMismatch(ImageError):
    """The source's bytes are not the blob the digest names (replaced, truncated, corrupt)."""


def memfd(name: str) -> int:
    """A new, empty anonymous memory file (close-on-exec, sealable); ``name`` shows in ``/proc/PID/fd``."""
    try:
        return os.memfd_create(f"yurt-{name}"[:249], os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except OSError as e:
        raise ImageError(f"cannot create a memory file for {name}: {e.strerror}")


def seal(fd: int) -> None:
    """Make the memory file ``fd`` immutable for good (through every descriptor, however obtained)."""
    try:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except OSError as e:
        raise ImageError(f"cannot seal a memory file: {e.strerror}")


def open_source(path: str | os.PathLike[str], what: str) -> int:
    """``path`` opened for reading, when it is a regular file (not followed if it is a symbolic link,
    never blocking on a FIFO): a missing, linked or special file is a :class:`DigestMismatch`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise DigestMismatch(f"{what}: cannot open {os.fspath(path)}: {e.strerror}")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DigestMismatch(f"{what}: {os.fspath(path)} is not a regular file")
    return fd


def verified_copy(source: str | os.PathLike[str] | int, digest: str, size: int, *, offset: int = 0,
                  what: str | None = None) -> int:
    """A sealed memory file holding the ``size`` bytes at ``offset`` of ``source`` (a path, or a descriptor
    read with ``pread``), whose ``algorithm:hex`` ``digest`` was computed from the bytes copied.

    A source shorter than ``size``, or whose bytes hash to anything else, is a :class:`DigestMismatch`
    (nothing is returned: the memory file is closed).  The copy is made whatever the source turns into
    meanwhile: only its bytes, as read once, count.
    """
    what = what or digest
    algorithm, expected = parse_digest(digest)  # the cache's one gate for digests (sha256, sha512)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImageError(f"{what}: invalid size {size!r}")
    own = not isinstance(source, int)
    src = open_source(source, what) if own else source  # type: ignore[arg-type]
    out = -1
    try:
        out = memfd(digest.replace(":", "-")[:40])
        h = hashlib.new(algorithm)
        buf = bytearray(min(size, _CHUNK) or 1)
        view = memoryview(buf)
        done = 0
        while done < size:
            want = min(size - done, len(buf))
            try:
                n = os.preadv(src, [view[:want]], offset + done)
            except OSError as e:
                raise DigestMismatch(f"{what}: cannot read: {e.strerror}")
            if n == 0:
                raise DigestMismatch(f"{what}: {size - done} bytes shorter than the {size} its descriptor says")
            chunk = view[:n]
            h.update(chunk)
            _write_all(out, chunk)
            done += n
        if h.hexdigest() != expected:
            raise DigestMismatch(f"{what}: content does not match its digest (got {algorithm}:{h.hexdigest()})")
        seal(out)
        os.lseek(out, 0, os.SEEK_SET)
        result, out = out, -1
        return result
    except OSError as e:  # writing into memory: ENOSPC/ENOMEM
        raise ImageError(f"{what}: cannot copy into memory: {e.strerror}",
                         "the node is short of memory (under the site policy images run from private copies)")
    finally:
        if out >= 0:
            os.close(out)
        if own:
            os.close(src)


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data):]
