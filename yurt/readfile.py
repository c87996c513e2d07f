"""Reading a file the user named (a recipe, an env file, a config file): bounded, never hanging.

``open(path).read()`` on such a path can hang on a FIFO without a writer (the open blocks),
read ``/dev/zero`` or a 64 GiB sparse file until memory runs out, and turn a Latin-1 byte into an
internal error.  :func:`read_file` opens without blocking, reads at most ``limit`` bytes and says
which file was wrong in one line; :func:`text` decodes UTF-8 the same way.  A pipe from the shell
(``--env-file <(cmd)``) still works: its writer is already there when yurt opens it.  Files inside
an image are another matter (read within its root, without following symlinks: see
:mod:`yurt.build.layout` and :mod:`yurt.image.inspect`).

Bottom layer: imports nothing of yurt but :mod:`yurt.errors`, and only ``os`` and ``stat``.
"""

from __future__ import annotations

import os
import stat

from yurt.errors import UsageError, YurtError

MIB = 1 << 20


def read_file(path: str, what: str, limit: int, error: type[YurtError] = UsageError) -> bytes:
    """The bytes of ``path`` (at most ``limit``), or ``error("cannot read WHAT PATH: reason")``."""
    name = f"{what} {path}" if what else path
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO's open must not wait for a writer
    except OSError as e:
        raise error(f"cannot read {name}: {e.strerror}")
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise error(f"cannot read {name}: it is a directory")
        if stat.S_ISREG(st.st_mode) and st.st_size > limit:
            raise error(f"{name} is too large ({st.st_size} bytes; at most {limit} are read)")
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
                raise error(f"{name} is too large (more than {limit} bytes)")
    except OSError as e:
        raise error(f"cannot read {name}: {e.strerror}")
    finally:
        os.close(fd)


def text(data: bytes, path: str, what: str, error: type[YurtError] = UsageError) -> str:
    """``data`` as UTF-8 (a leading byte-order mark dropped), or an error naming the first bad byte."""
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        name = f"{what} {path}" if what else path
        raise error(f"{name} is not UTF-8 text (byte 0x{data[e.start]:02x} on line {line})",
                    "convert it, e.g. iconv -f latin1 -t utf-8")
