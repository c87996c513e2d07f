"""Reading a file from the host that the user named (a recipe, an env file, a config file): bounded, never hanging.

``open(path).read()`` on such a path can hang on a FIFO without a writer (the open blocks),
read ``/dev/zero`` or a 64 GiB sparse file until memory runs out, and turn a Latin-1 byte into an
internal error.  :func:`read_file` opens without blocking, reads at most ``limit`` bytes and says
which file was wrong in one line; :func:`text` decodes UTF-8 the same way and refuses a NUL byte,
naming the line.  A pipe from the shell (``--env-file <(cmd)``) still works: its writer is
already there when yurt opens it.  This is the one reader of such files: definition files,
Dockerfiles and build-arg files (:mod:`yurt.builder.executor`), ``yurt convert``'s input,
``--env-file``, the site and user config files (:mod:`yurt.configfile`), OCI hook definitions
and CDI specs, ``--ca-file``, the registry auth file, and the host's apt sources (with ``nofollow``).

Files inside an image are another matter: they are read within its root without following any
symlink (:mod:`yurt.image.inroot`).

Bottom layer: imports nothing of yurt but :mod:`yurt.errors`, and only ``os`` and ``stat``.  It is
on ``yurt exec``'s path only once there is a file to read (a config file, ``--env-file``, a hook
definition), so the exec-path contract in ``pyproject.toml`` lists it.
"""

from __future__ import annotations

import os
import stat

from yurt.errors import UsageError, YurtError

MIB = 1 << 20


def read_file(path: str, what: str, limit: int, error: type[YurtError] = UsageError, *,
              nofollow: bool = False) -> bytes:
    """The bytes of ``path`` (at most ``limit``), or ``error("cannot read WHAT PATH: reason")``.

    ``what`` names the file for the user ("the definition file"; "" for none).  With ``nofollow``
    (a file yurt looks for itself, not one the user named) a symlink in the last component and
    anything but a regular file are refused too.
    """
    name = f"{what} {path}" if what else path
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK  # a FIFO's open must not wait for a writer
    try:
        fd = os.open(path, flags | (os.O_NOFOLLOW if nofollow else 0))
    except OSError as e:
        raise error(f"cannot read {name}: {e.strerror}")
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise error(f"cannot read {name}: it is a directory")
        if nofollow and not stat.S_ISREG(st.st_mode):
            raise error(f"cannot read {name}: not a regular file")
        if stat.S_ISREG(st.st_mode) and st.st_size > limit:
            raise error(f"{name} is larger than {limit} bytes", "is it the right file?")
        os.set_blocking(fd, True)  # a FIFO without a writer now reads as empty, one with a writer as it writes
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(MIB, limit + 1 - total))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise error(f"{name} is larger than {limit} bytes", "is it the right file?")
    except OSError as e:
        raise error(f"cannot read {name}: {e.strerror}")
    finally:
        os.close(fd)


def text(data: bytes, path: str, what: str, error: type[YurtError] = UsageError) -> str:
    """``data`` (read from ``path``) as UTF-8 text without NUL bytes, a leading byte-order mark
    dropped; else ``error("WHAT PATH:LINE: not UTF-8 text (byte 0xe9)")`` or ``...: contains a NUL byte``."""
    name = f"{what} {path}" if what else path
    try:
        decoded = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise error(f"{name}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x})",
                    "convert it, e.g. iconv -f latin1 -t utf-8")
    nul = decoded.find("\0")
    if nul >= 0:
        raise error(f"{name}:{decoded.count(chr(10), 0, nul) + 1}: contains a NUL byte", "is it a text file?")
    return decoded.removeprefix("\ufeff")


def read_text(path: str, what: str, limit: int, error: type[YurtError] = UsageError) -> str:
    """:func:`read_file` then :func:`text`: the checked text of the file the user named."""
    return text(read_file(path, what, limit, error), path, what, error)
