"""A streaming tar reader for layer blobs: headers, pax records, GNU long names and sparse files.

A small streaming tar reader instead of ``tarfile``: for images of many small files,
tarfile's per-member cost (about 75 us to parse and re-emit a header) made Python the
bottleneck in front of tar2sqfs.  It reads what tar writers produce (POSIX ustar and
pax, GNU long names and sparse files, v7), checks every header checksum and every
number, and hands member data on as zero-copy slices of the decompressed chunks
(:mod:`yurt.image.layer_blob` supplies them).  It is separate from the merge
(:mod:`yurt.image.layers`) because it knows one archive's format, nothing of layers
above or below it.

Hostile input: bad tar checksums in the middle of a layer, truncated data, oversized
extended headers or sparse maps and unknown member types are errors
(:class:`~yurt.errors.ImageError`) that name the layer and the member, not a silently
shortened image.  Extended attributes squashfs cannot store are dropped here.
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Iterator

from yurt.errors import ImageError
from yurt.image.layer_blob import _COPY, Layer, _Budget, _open_decoded, _Prefetch

_BLOCK = tarfile.BLOCKSIZE
_ZERO_BLOCK = bytes(_BLOCK)
_ZERO_CHUNK = memoryview(bytes(_COPY))
_MAX_EXTENDED = 1 << 20  # bytes of one pax header, GNU long name or sparse map
_USTAR_MAGIC = b"ustar\x00"
REGTYPE, DIRTYPE, SYMTYPE, LNKTYPE = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE
CHRTYPE, BLKTYPE, FIFOTYPE = tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE
_REGULAR = frozenset((tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE))
_HEADER_ONLY = frozenset((DIRTYPE, SYMTYPE, LNKTYPE, CHRTYPE, BLKTYPE, FIFOTYPE))
_XATTR_PREFIXES = ("SCHILY.xattr.", "LIBARCHIVE.xattr.")
_SQUASHFS_XATTRS = ("user.", "trusted.", "security.")  # the namespaces squashfs can store


def _keep_xattr(key: str) -> bool:
    """Whether a pax xattr record names an attribute squashfs can hold (others, such as
    system.posix_acl_*, are dropped as mksquashfs drops them; tar2sqfs would fail on them)."""
    if key.startswith("SCHILY.xattr."):
        return key[13:].startswith(_SQUASHFS_XATTRS)
    from urllib.parse import unquote

    return unquote(key[17:]).startswith(_SQUASHFS_XATTRS)


class _Entry:
    """One member: a parsed input header, or a header to write."""

    __slots__ = ("name", "type", "mode", "uid", "gid", "size", "mtime", "linkname", "uname", "gname",
                 "devmajor", "devminor", "xattrs")

    def __init__(self, name: str, type: bytes, mode: int, uid: int, gid: int, size: int, mtime: int,
                 linkname: str, uname: str, gname: str, devmajor: int, devminor: int,
                 xattrs: dict[str, str] | None) -> None:
        self.name, self.type, self.mode, self.uid, self.gid = name, type, mode, uid, gid
        self.size, self.mtime, self.linkname, self.uname, self.gname = size, mtime, linkname, uname, gname
        self.devmajor, self.devminor, self.xattrs = devmajor, devminor, xattrs

    def tarinfo(self) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(self.name or ".")
        ti.type = self.type
        ti.mode, ti.uid, ti.gid, ti.mtime = self.mode, self.uid, self.gid, self.mtime
        ti.size = self.size if self.type == REGTYPE else 0
        ti.linkname, ti.uname, ti.gname = self.linkname, self.uname, self.gname
        ti.devmajor, ti.devminor = self.devmajor, self.devminor
        ti.pax_headers = dict(self.xattrs) if self.xattrs else {}
        return ti


def _text(raw: bytes) -> str:
    end = raw.find(b"\x00")
    return (raw if end < 0 else raw[:end]).decode("utf-8", "surrogateescape")


def _num(field: bytes) -> int:
    """A numeric header field: octal text, or GNU base-256 (first byte 0x80 or 0xff)."""
    try:
        return int(field.rstrip(b"\x00 ") or b"0", 8)  # the common case, fast
    except ValueError:
        return _num_slow(field)


def _num_slow(field: bytes) -> int:
    first = field[0]
    if first & 0x80:
        if first not in (0x80, 0xFF):
            raise ValueError("invalid base-256 number")
        n = int.from_bytes(field[1:], "big")
        return n - 256 ** (len(field) - 1) if first == 0xFF else n
    end = field.find(b"\x00")
    digits = (field if end < 0 else field[:end]).strip()
    if not digits:
        return 0
    if not digits.isdigit():
        raise ValueError(f"invalid number {digits[:12]!r}")
    return int(digits, 8)


def _pax_int(value: bytes) -> int:
    if not value.isdigit():
        raise ValueError(f"invalid pax number {value[:20]!r}")
    return int(value)


def _pax_time(value: bytes) -> int:
    whole = value.split(b".", 1)[0]
    sign = -1 if whole.startswith(b"-") else 1
    return sign * _pax_int(whole.lstrip(b"-") or b"0")


def _pax_records(data: bytes) -> list[tuple[str, bytes]]:
    """The "%d key=value\\n" records of a pax header."""
    out = []
    pos, n = 0, len(data)
    while pos < n:
        if data[pos] == 0:  # NUL padding after the last record
            break
        space = data.find(b" ", pos, pos + 21)
        if space < 0:
            raise ValueError("invalid pax record")
        length = _pax_int(data[pos:space])
        end = pos + length
        if end > n or length <= space - pos + 2 or data[end - 1] != 0x0A:
            raise ValueError("invalid pax record length")
        record = data[space + 1:end - 1]
        eq = record.find(b"=")
        if eq <= 0:
            raise ValueError("invalid pax record")
        out.append((record[:eq].decode("utf-8"), record[eq + 1:]))  # keywords are UTF-8 (or ValueError)
        pos = end
    return out


def _byte_sum(block: bytes) -> int:
    """Sum of the bytes of a 512-byte block: Adler-32's low half is 1 + the sum (mod 65521), exact
    for 256 bytes (at most 65280); much faster than sum()."""
    return (zlib.adler32(block[:256]) & 0xFFFF) + (zlib.adler32(block[256:]) & 0xFFFF) - 2


def _checksum_ok(h: bytes) -> bool:
    stored = _num(h[148:156])
    unsigned = _byte_sum(h) - sum(h[148:156]) + 256
    if stored == unsigned:
        return True
    high = sum(1 for b in h[:148] if b & 0x80) + sum(1 for b in h[156:] if b & 0x80)
    return stored == unsigned - 256 * high  # Sun and NeXT tars summed signed chars


def _sparse_ops(pairs: list[tuple[int, int]], stored: int, realsize: int) -> list[list[int]]:
    """Data/hole runs of a sparse file, reversed for pop(): [1, n] = n stored bytes, [0, n] = n zeros."""
    ops: list[list[int]] = []
    pos = total = 0
    for offset, count in pairs:
        if count == 0:
            continue
        if offset < pos or count < 0 or offset + count > realsize:
            raise ValueError("invalid sparse map")
        if offset > pos:
            ops.append([0, offset - pos])
        ops.append([1, count])
        pos = offset + count
        total += count
    if total != stored:
        raise ValueError(f"sparse map covers {total} bytes, the member stores {stored}")
    if realsize > pos:
        ops.append([0, realsize - pos])
    ops.reverse()
    return ops


class _TarReader:
    """Members of one tar stream: ``next()`` parses a header, ``read(n)`` gives data pieces."""

    def __init__(self, src: _Prefetch, label: str, budget: _Budget) -> None:
        self._src = src
        self.label = label
        self._budget = budget
        self._buf = b""
        self._pos = 0
        self._global: dict[str, bytes] = {}
        self._ops: list[list[int]] = []  # data runs of the current member, reversed
        self._stored = 0  # its bytes in the archive not read yet
        self._pad = 0
        self.member: str | None = None  # for messages

    # -- the byte stream

    def _fill(self) -> bool:
        self._buf, self._pos = self._src.read(-1), 0
        return bool(self._buf)

    def _take(self, n: int) -> bytes:
        """n bytes, fewer only at the end of the stream."""
        pos, end = self._pos, self._pos + n
        if end <= len(self._buf):
            self._pos = end
            return self._buf[pos:end]
        parts = [self._buf[pos:]]
        got = len(parts[0])
        while got < n:
            if not self._fill():
                break
            step = min(n - got, len(self._buf))
            parts.append(self._buf[:step])
            self._pos = step
            got += step
        return b"".join(parts)

    def _skip(self, n: int) -> None:
        while n > 0:
            avail = len(self._buf) - self._pos
            if avail <= 0:
                if not self._fill():
                    raise self._error("truncated tar data", during=True)
                continue
            step = min(avail, n)
            self._pos += step
            n -= step

    def _error(self, why: str, during: bool = False) -> ImageError:
        if self.member is None:
            where = "first member"
        else:
            where = f"{'member' if during else 'after member'} {self.member!r}"
        return ImageError(f"layer {self.label}: {where}: {why}")

    # -- member data

    def read(self, n: int) -> bytes | memoryview:
        """Up to n bytes of the current member (b"" at its end); a slice valid until the next call."""
        ops = self._ops
        while ops:
            op = ops[-1]
            if op[1] <= 0:
                ops.pop()
                continue
            step = min(n, op[1])
            if op[0]:
                if self._pos >= len(self._buf) and not self._fill():
                    raise self._error("truncated tar data", during=True)
                end = min(len(self._buf), self._pos + step)
                piece = memoryview(self._buf)[self._pos:end]
                self._pos = end
                op[1] -= len(piece)
                self._stored -= len(piece)
                return piece
            step = min(step, len(_ZERO_CHUNK))
            self._budget.charge(step, self.label)
            op[1] -= step
            return _ZERO_CHUNK[:step]
        return b""

    # -- headers

    def _extended(self, size: int) -> bytes:
        if size > _MAX_EXTENDED:
            raise self._error(f"extended header of {size} bytes (limit {_MAX_EXTENDED})")
        data = self._take(size)
        if len(data) < size:
            raise self._error("truncated tar data")
        self._skip(-size % _BLOCK)
        return data

    def next(self) -> _Entry | None:
        """The next member, None at the end of the archive."""
        self._skip(self._stored + self._pad)
        self._ops, self._stored, self._pad = [], 0, 0
        try:
            return self._next()
        except ValueError as e:
            raise self._error(f"corrupt tar header: {e}")

    def _next(self) -> _Entry | None:
        pax: dict[str, bytes] | None = None
        pairs00: list[int] = []  # pax sparse 0.0 offset/numbytes records, in order
        longname = longlink = None
        while True:
            h = self._take(_BLOCK)
            if len(h) < _BLOCK:
                if not h and pax is None and longname is None and longlink is None:
                    return None  # no end-of-archive blocks: accepted, as tar does
                raise self._error("truncated tar data")
            if h == _ZERO_BLOCK:
                if pax is not None or longname is not None or longlink is not None:
                    raise self._error("extended header not followed by a member")
                return None
            if not _checksum_ok(h):
                raise self._error("corrupt tar header (bad checksum)")
            kind = h[156:157]
            size = _num(h[124:136])
            if size < 0:
                raise ValueError("negative size")
            if kind in (b"x", b"g", b"X"):
                records = _pax_records(self._extended(size))
                if kind == b"g":
                    for key, value in records:
                        if value:
                            self._global[key] = value
                        else:
                            self._global.pop(key, None)
                    continue
                if pax is None:
                    pax = {}
                for key, value in records:
                    if key in ("GNU.sparse.offset", "GNU.sparse.numbytes"):
                        pairs00.append(_pax_int(value))
                    else:
                        pax[key] = value
                continue
            if kind in (b"L", b"K"):
                value = _text(self._extended(size))
                if kind == b"L":
                    longname = value
                else:
                    longlink = value
                continue
            if kind == b"V":  # a GNU volume label, not a file
                self._skip(size + -size % _BLOCK)
                continue
            break
        self._budget.count_member(self.label)
        name = _text(h[0:100])
        if h[257:263] == _USTAR_MAGIC and h[345]:
            name = _text(h[345:500]) + "/" + name
        linkname = _text(h[157:257])
        mode, uid, gid, mtime = _num(h[100:108]), _num(h[108:116]), _num(h[116:124]), _num(h[136:148])
        uname, gname = _text(h[265:297]), _text(h[297:329])
        devmajor = devminor = 0
        if kind in (CHRTYPE, BLKTYPE):
            devmajor, devminor = _num(h[329:337]), _num(h[337:345])
        if kind == tarfile.AREGTYPE and name.endswith("/"):
            kind = DIRTYPE
        if longname is not None:
            name = longname
        if longlink is not None:
            linkname = longlink
        fields = {**self._global, **pax} if self._global and pax is not None else (pax or self._global)
        xattrs = None
        sparse: list[tuple[int, int]] | None = None
        realsize = 0
        if fields:
            for key, value in fields.items():
                if key == "path":
                    name = value.decode("utf-8", "surrogateescape")
                elif key == "linkpath":
                    linkname = value.decode("utf-8", "surrogateescape")
                elif key == "size":
                    size = _pax_int(value)
                elif key == "uid":
                    uid = _pax_int(value)
                elif key == "gid":
                    gid = _pax_int(value)
                elif key == "mtime":
                    mtime = _pax_time(value)
                elif key == "uname":
                    uname = value.decode("utf-8", "surrogateescape")
                elif key == "gname":
                    gname = value.decode("utf-8", "surrogateescape")
                elif key.startswith(_XATTR_PREFIXES) and _keep_xattr(key):
                    if xattrs is None:
                        xattrs = {}
                    xattrs[key] = value.decode("utf-8", "surrogateescape")
            if "GNU.sparse.name" in fields:
                name = fields["GNU.sparse.name"].decode("utf-8", "surrogateescape")
            if "GNU.sparse.map" in fields:  # pax sparse 0.1
                numbers = [_pax_int(x) for x in fields["GNU.sparse.map"].split(b",")] if fields["GNU.sparse.map"] \
                    else []
                sparse = list(zip(numbers[::2], numbers[1::2], strict=False))
                realsize = _pax_int(fields.get("GNU.sparse.size", b""))
            elif "GNU.sparse.size" in fields:  # pax sparse 0.0
                sparse = list(zip(pairs00[::2], pairs00[1::2], strict=False))
                realsize = _pax_int(fields["GNU.sparse.size"])
            elif fields.get("GNU.sparse.major") == b"1" and fields.get("GNU.sparse.minor") == b"0":
                realsize = _pax_int(fields.get("GNU.sparse.realsize", b""))
                sparse = []  # the map is at the start of the data
        if kind == b"S":  # old GNU sparse: map in the header and extension blocks
            sparse = [(_num(h[i:i + 12]), _num(h[i + 12:i + 24])) for i in range(386, 482, 24)]
            realsize = _num(h[483:495])
            extended = h[482]
            while extended:
                block = self._take(_BLOCK)
                if len(block) < _BLOCK:
                    raise self._error("truncated tar data")
                sparse += [(_num(block[i:i + 12]), _num(block[i + 12:i + 24])) for i in range(0, 504, 24)]
                extended = block[504]
                if len(sparse) > _MAX_EXTENDED // 24:
                    raise ValueError("sparse map too long")
            kind = REGTYPE
        self.member = name
        if kind in _REGULAR or sparse is not None:
            stored = size
            self._stored, self._pad = size, -size % _BLOCK
            if sparse is None:
                self._ops = [[1, size]]
            else:
                if kind != REGTYPE and kind not in _REGULAR:
                    raise ValueError("sparse member that is not a regular file")
                if fields and fields.get("GNU.sparse.major") == b"1":
                    sparse, used = self._sparse_map_10()
                    stored -= used
                self._ops = _sparse_ops(sparse, stored, realsize)
                size = realsize
            kind = REGTYPE
        elif kind not in _HEADER_ONLY:
            raise self._error(f"member {name!r} has unsupported tar type {kind!r}")
        else:
            size = 0  # header-only types carry no data, whatever the size field says (as Go's tar)
        return _Entry(name, kind, mode, uid, gid, size, mtime, linkname, uname, gname, devmajor, devminor, xattrs)

    def _sparse_map_10(self) -> tuple[list[tuple[int, int]], int]:
        """Pax sparse 1.0: decimal lines (count, then offset/size pairs) in whole blocks before the data."""
        raw = b""
        while True:
            block = self._take(_BLOCK)
            if len(block) < _BLOCK:
                raise self._error("truncated tar data", during=True)
            raw += block
            self._stored -= _BLOCK
            lines = raw.split(b"\n")
            if len(lines) > 1:
                count = _pax_int(lines[0])
                if len(lines) - 1 >= 1 + 2 * count:
                    numbers = [_pax_int(x) for x in lines[1:1 + 2 * count]]
                    return list(zip(numbers[::2], numbers[1::2], strict=True)), len(raw)
            if len(raw) > _MAX_EXTENDED:
                raise ValueError("sparse map too long")


def _iter_layer(layer: Layer, budget: _Budget) -> Iterator[tuple[_Entry, _TarReader | None]]:
    """(member, data reader for regular files) for each member, in archive order.

    The reader's ``read(n)`` serves the member's data until the next member is requested.
    Every failure is an ImageError naming the layer and the member.
    """
    stream = _open_decoded(layer, budget)
    if stream is None:
        return
    try:
        reader = _TarReader(stream, layer.label, budget)
        while True:
            entry = reader.next()
            if entry is None:
                return
            yield entry, reader if entry.type == REGTYPE else None
    finally:
        stream.close()


class _MemberFile:
    """File-like view of one member's data for :func:`merged_entries` callers."""

    __slots__ = ("_reader", "left")

    def __init__(self, reader: _TarReader, size: int) -> None:
        self._reader, self.left = reader, size

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > self.left:
            n = self.left
        parts = []
        while n > 0:
            piece = self._reader.read(n)
            if not piece:
                raise ImageError(f"layer {self._reader.label}: member {self._reader.member!r}: truncated tar data")
            parts.append(bytes(piece))
            n -= len(piece)
            self.left -= len(piece)
        return b"".join(parts)
