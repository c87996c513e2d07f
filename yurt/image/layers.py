"""Flatten OCI image layers into one squashfs, streaming, without unpacking to disk.

An OCI image is a list of layer blobs (tar, tar+gzip, tar+zstd), each a changeset applied on
top of the ones below it (image-spec ``layer.md``).  Instead of extracting them into a
directory, which needs root to keep file owners and device nodes, :func:`write_merged_tar`
computes the *result* of applying them and writes it as one tar stream, and
:func:`tar_to_squashfs` feeds that stream to ``tar2sqfs`` (squashfs-tools-ng), which records
owners, modes and device numbers from the tar headers whatever user runs it.

Merge rules (image-spec "Applying Changesets" and "Whiteouts"):

* the topmost layer that mentions a path wins; a directory over a directory merges (the
  children of both stay, the attributes are the topmost layer's);
* a non-directory replaces whatever was below it, including a whole directory subtree, and
  a directory replaces a non-directory; a path with entries below it in a layer counts as a
  directory of that layer even without its own entry;
* ``.wh.NAME`` in layer k deletes NAME and everything under it from layers below k;
  ``.wh..wh..opq`` in directory D of layer k hides everything under D from layers below k;
  neither affects entries of layer k itself, and whiteout entries never reach the output.
  Other ``.wh..wh.*`` names are aufs bookkeeping and are dropped, as Docker does.

How it streams: one pass over the *headers* of layers 2..n builds a small index (which paths
they replace, delete or make opaque, and the final attributes of their directories); then
one pass over all layers bottom-up emits every entry that no higher layer deletes or
replaces, so the data of each file is read exactly once and only its visible version is
copied.  A single layer is read once.  Directories are emitted once, where they first
appear, with their topmost attributes; missing parents are emitted just before their first
child, so the output lists parents before children, each path once, hard-link targets
before links.

Hostile input.  Layers come from the network; everything in them is checked, and every
problem is an :class:`~yurt.errors.ImageError` that names the layer and the member:

* member names are normalised (leading ``/`` and ``./``, ``//`` and ``.`` components go);
  a ``..`` that would climb above the root, a NUL byte, a name over 4096 bytes or a
  component over 255 bytes is refused;
* hard links must point inside the image at a non-directory that comes earlier in the
  merged stream (a target that a higher layer replaced is re-read from its layer and copied
  under the link's name, so the link keeps the content it had);
* symbolic links are kept byte for byte, absolute targets included: they are resolved
  inside the container's root when it runs, never on the host, and the squashfs is never
  extracted by following them;
* device nodes and FIFOs are kept: the image is mounted ``nodev``, so a device node in it
  gives no access to the device;
* setuid/setgid bits and file capabilities (``security.capability`` xattrs) are kept as
  the image has them: the image is mounted ``nosuid`` (which also disables file
  capabilities) and yurt sets ``PR_SET_NO_NEW_PRIVS``, so they grant nothing; keeping them
  makes the image identical to what other runtimes show;
* a decompression bomb stops at ``max_bytes`` of uncompressed tar (default 64 GiB, or
  ``YURT_MAX_IMAGE_BYTES``), and an archive of more than 10 million members is refused;
* truncated or corrupt compressed data, bad tar checksums in the middle of a layer, and
  unknown member types are errors, not a silently shortened image.

The compression of each blob is detected from its magic bytes, not only from its media type,
since registries and tools mislabel layers: gzip, xz and bzip2 are decoded in-process (zlib,
lzma, bz2), zstd through the ``zstd`` program.
"""

from __future__ import annotations

import os
import queue
import subprocess
import tarfile
import tempfile
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

from yurt.errors import ImageError
from yurt.record import Record

DEFAULT_MAX_BYTES = 64 << 30  # uncompressed tar bytes per pass over an image
MAX_MEMBERS = 10_000_000  # tar members per pass over an image
MAX_NAME_BYTES = 4096  # PATH_MAX
MAX_COMPONENT_BYTES = 255  # NAME_MAX; squashfs allows 256
MAX_REREADS = 1000  # hard links whose target a higher layer replaced (each re-reads a layer)
WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
_AUFS_META_PREFIX = ".wh..wh."
_CHUNK = 1 << 22  # compressed bytes read at a time
_COPY = 1 << 20  # member data copied at a time
_PREFETCH = 1 << 22  # decompressed bytes handed over at a time

_MAX_MTIME = (1 << 32) - 1  # squashfs stores unsigned 32-bit times
_MAX_ID = (1 << 32) - 1

COMPRESSIONS = ("zstd", "gzip", "lz4", "xz", "lzo")
DEFAULT_COMPRESSION = "zstd"
# zstd level 3 (zstd's own default): about gzip -9's ratio on typical images, several times
# faster to build and 2-3x faster to read back; tar2sqfs's own zstd default (15) is ~10x
# slower to build for a few percent.  Use "gzip" for hosts whose kernel or squashfuse lacks
# zstd (Linux < 4.14, old squashfuse).  "lz4" builds and reads fastest but is larger, and
# unsquashfs 4.5 cannot read tar2sqfs's lz4 images (the kernel and squashfuse can), which
# breaks yurt's extract fallback.
DEFAULT_LEVELS = {"zstd": 3, "gzip": 9, "xz": 6}
_LEVEL_RANGES = {"zstd": (1, 22), "gzip": (1, 9), "xz": (0, 9)}

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_BZIP2_MAGIC = b"BZh"


class Layer(Record):
    """One layer blob: the file ``path`` (or the ``size`` bytes at ``offset`` in it).

    ``media_type`` is what the manifest says (``""``: unknown, the content decides) and
    ``digest`` names the layer in error messages (``""``: the path does).
    """

    __slots__ = ("path", "media_type", "digest", "offset", "size")
    _defaults = {"media_type": "", "digest": "", "offset": 0, "size": None}
    path: str | os.PathLike[str]
    media_type: str
    digest: str
    offset: int
    size: int | None

    @property
    def label(self) -> str:
        return self.digest or os.fspath(self.path)


def max_image_bytes(max_bytes: int | None = None) -> int:
    """The bomb limit: ``max_bytes``, else ``YURT_MAX_IMAGE_BYTES`` (bytes, or with K/M/G/T), else 64 GiB."""
    if max_bytes is not None:
        return int(max_bytes)
    value = os.environ.get("YURT_MAX_IMAGE_BYTES", "").strip()
    if not value:
        return DEFAULT_MAX_BYTES
    scale = 1
    suffix = value[-1:].upper()
    if suffix in "KMGT" and suffix:
        scale = 1024 ** ("KMGT".index(suffix) + 1)
        value = value[:-1]
    try:
        limit = int(value) * scale
    except ValueError:
        limit = -1
    if limit <= 0:
        raise ImageError(f"YURT_MAX_IMAGE_BYTES={os.environ['YURT_MAX_IMAGE_BYTES']!r} is not a positive size")
    return limit


# --- decoding one blob into a tar byte stream ----------------------------------------------


class _Budget:
    """Uncompressed bytes and members seen in one pass, against the bomb limits."""

    __slots__ = ("limit", "used", "members")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.members = 0

    def charge(self, n: int, label: str) -> None:
        self.used += n
        if self.used > self.limit:
            raise ImageError(
                f"layer {label}: the image expands to more than {self.limit} bytes; refusing it "
                "(a decompression bomb?)", "raise YURT_MAX_IMAGE_BYTES if the image is genuine"
            )

    def count_member(self, label: str) -> None:
        self.members += 1
        if self.members > MAX_MEMBERS:
            raise ImageError(f"layer {label}: the image has more than {MAX_MEMBERS} tar members; refusing it")


class _Region:
    """Raw bytes of a blob (a whole file, or a byte range of one)."""

    def __init__(self, layer: Layer) -> None:
        self.label = layer.label
        path = os.fspath(layer.path)
        try:
            self.f = open(path, "rb", buffering=0)  # closed by close()
        except OSError as e:
            raise ImageError(f"layer {self.label}: cannot open {path}: {e.strerror}")
        self.left = layer.size
        if layer.offset:
            self.f.seek(layer.offset)

    def read(self, n: int) -> bytes:
        if self.left is not None:
            n = min(n, self.left)
            if n <= 0:
                return b""
        try:
            data = self.f.read(n)
        except OSError as e:
            raise ImageError(f"layer {self.label}: cannot read the blob: {e.strerror or e}")
        if self.left is not None:
            if not data:
                raise ImageError(f"layer {self.label}: blob is shorter than its recorded size")
            self.left -= len(data)
        return data

    def close(self) -> None:
        self.f.close()


class _Decoded:
    """A decompressed stream: ``read(n)`` gives at most n bytes, b"" at the end."""

    def __init__(self, region: _Region, kind: str, budget: _Budget) -> None:
        self.region = region
        self.kind = kind
        self.budget = budget
        self.label = region.label
        self._in = b""
        self._d: Any = self._new() if kind != "tar" else None
        self._done = False

    def _new(self) -> Any:
        if self.kind == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        if self.kind == "xz":
            import lzma

            return lzma.LZMADecompressor()
        import bz2

        return bz2.BZ2Decompressor()

    def _magic(self) -> bytes:
        return {"gzip": _GZIP_MAGIC, "xz": _XZ_MAGIC, "bzip2": _BZIP2_MAGIC}[self.kind]

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = _COPY
        if self._d is None:  # plain tar
            data = self.region.read(n)
        else:
            data = self._inflate(n)
        if data:
            self.budget.charge(len(data), self.label)
        return data

    def _inflate(self, n: int) -> bytes:
        while not self._done:
            d = self._d
            if d.eof:
                # Concatenated members (pigz, multi-stream xz) go on; anything else after the
                # end of the compressed stream is padding we do not need.
                rest = d.unused_data + self._in
                magic = self._magic()
                while len(rest) < len(magic):
                    more = self.region.read(_CHUNK)
                    if not more:
                        break
                    rest += more
                if not rest.startswith(magic):
                    self._done = True
                    break
                self._d, self._in = self._new(), rest
                continue
            zlib_like = self.kind == "gzip"
            if not self._in and (zlib_like or d.needs_input):
                self._in = self.region.read(_CHUNK)
                if not self._in:
                    out = self._decompress(d, b"", n) if zlib_like else b""
                    if out:
                        return out
                    raise ImageError(f"layer {self.label}: truncated {self.kind} data")
            out = self._decompress(d, self._in, n)
            self._in = d.unconsumed_tail if zlib_like else b""
            if out:
                return out
        return b""

    def _decompress(self, d: Any, data: bytes, n: int) -> bytes:
        try:
            return d.decompress(data, n)
        except Exception as e:  # zlib.error, lzma.LZMAError, OSError/EOFError from bz2
            raise ImageError(f"layer {self.label}: corrupt {self.kind} data: {e}")

    def close(self) -> None:
        self.region.close()


class _ZstdPipe:
    """zstd decompression through the ``zstd`` program (Python < 3.14 has no zstd module)."""

    def __init__(self, layer: Layer, budget: _Budget) -> None:
        self.label = layer.label
        self.budget = budget
        from yurt.programs import find, helper_env

        exe = find("zstd")
        if exe is None:
            raise ImageError(f"layer {self.label} is zstd-compressed but the zstd program is not installed",
                             "install zstd")
        self._err = tempfile.TemporaryFile()
        self._feeder: threading.Thread | None = None
        region = _Region(layer)
        whole = layer.size is None and not layer.offset
        try:
            self.proc = subprocess.Popen(
                [exe, "-d", "-c", "-q"], stdin=region.f if whole else subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=self._err, env=helper_env(),
            )
        except OSError as e:
            region.close()
            self._err.close()
            raise ImageError(f"layer {self.label}: cannot run zstd: {e.strerror}")
        if whole:
            region.close()  # the child has its own copy of the descriptor
        else:
            self._feeder = threading.Thread(target=self._feed, args=(region,), daemon=True)
            self._feeder.start()

    def _feed(self, region: _Region) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            while True:
                chunk = region.read(_CHUNK)
                if not chunk:
                    break
                stdin.write(chunk)
        except (OSError, ImageError):
            pass  # zstd stopped reading (killed, or it found an error and will report it)
        finally:
            region.close()
            try:
                stdin.close()
            except OSError:
                pass

    def read(self, n: int = -1) -> bytes:
        stdout = self.proc.stdout
        assert stdout is not None
        data = stdout.read(n if n and n > 0 else _COPY)  # blocks for n bytes: this runs in _Prefetch's thread
        if data:
            self.budget.charge(len(data), self.label)
            return data
        if self.proc.wait() != 0:
            self._err.seek(0)
            lines = [ln.strip() for ln in self._err.read().decode("utf-8", "replace").splitlines() if ln.strip()]
            detail = lines[-1] if lines else f"exit status {self.proc.returncode}"
            raise ImageError(f"layer {self.label}: zstd decompression failed: {detail}")
        return b""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self._feeder is not None:
            self._feeder.join()
        self._err.close()


class _Prefetch:
    """Decompresses in a background thread, a few MiB ahead of the tar parser.

    zlib, lzma and bz2 release the GIL while they work, so on a multi-core node the
    decompression overlaps the (GIL-bound) header parsing and writing.
    """

    def __init__(self, src: _Decoded | _ZstdPipe, depth: int = 8) -> None:
        self._src = src
        self._q: queue.Queue[bytes | BaseException] = queue.Queue(depth)
        self._stop = threading.Event()
        self._buf = b""
        self._pos = 0
        self._eof = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                data = self._src.read(_PREFETCH)
                self._put(data)
                if not data:
                    return
        except BaseException as e:
            self._put(e)

    def _put(self, item: bytes | BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def read(self, n: int = -1) -> bytes:
        if self._pos >= len(self._buf):
            if self._eof:
                return b""
            item = self._q.get()
            if isinstance(item, BaseException):
                self._eof = True
                raise item
            if not item:
                self._eof = True
                return b""
            self._buf, self._pos = item, 0
        if n is None or n < 0:
            if self._pos == 0:
                self._pos = len(self._buf)
                return self._buf  # the whole chunk, no copy
            n = len(self._buf)
        out = self._buf[self._pos:self._pos + n]
        self._pos += len(out)
        return out

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._q.get_nowait()
            except queue.Empty:
                self._thread.join(0.05)
        self._src.close()


def _declared_compression(media_type: str, label: str) -> str | None:
    mt = media_type.strip().lower()
    if not mt:
        return None
    if "encrypted" in mt:
        raise ImageError(f"layer {label} is encrypted ({media_type}); yurt cannot decrypt layers")
    for suffix, kind in (("gzip", "gzip"), ("zstd", "zstd"), ("xz", "xz"), ("bzip2", "bzip2")):
        if mt.endswith(("+" + suffix, "." + suffix)):
            return kind
    if mt.endswith("tar"):
        return "tar"
    return None


def sniff_compression(head: bytes) -> str:
    """The compression the first bytes of a blob show: gzip, zstd, xz, bzip2 or tar (none)."""
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC) or (len(head) >= 4 and head[1:4] == b"\x2a\x4d\x18" and head[0] & 0xF0 == 0x50):
        return "zstd"  # a frame, or a skippable frame (0x184D2A5?)
    if head.startswith(_XZ_MAGIC):
        return "xz"
    if head.startswith(_BZIP2_MAGIC) and head[3:4].isdigit():
        return "bzip2"
    return "tar"


def _looks_like_tar(head: bytes) -> bool:
    if len(head) < tarfile.BLOCKSIZE:
        return False
    try:
        tarfile.TarInfo.frombuf(head[:tarfile.BLOCKSIZE], "utf-8", "surrogateescape")
    except tarfile.EOFHeaderError:
        return True  # an empty archive
    except (tarfile.HeaderError, ValueError):
        return False
    return True


def _open_decoded(layer: Layer, budget: _Budget) -> _Prefetch | None:
    """The layer's tar bytes as a stream, or None for an empty blob."""
    region = _Region(layer)
    try:
        head = region.read(tarfile.BLOCKSIZE)
    except BaseException:
        region.close()
        raise
    region.close()
    if not head:
        return None
    kind = sniff_compression(head)
    declared = _declared_compression(layer.media_type, layer.label)
    if kind == "tar" and not _looks_like_tar(head):
        what = f"{declared} data" if declared not in (None, "tar") else "a tar archive"
        raise ImageError(f"layer {layer.label}: not {what} (media type {layer.media_type or 'unknown'})")
    if kind == "zstd":
        return _Prefetch(_ZstdPipe(layer, budget))
    return _Prefetch(_Decoded(_Region(layer), kind, budget))


def iter_decompressed(layer: Layer, *, max_bytes: int | None = None) -> Iterator[bytes]:
    """The decompressed bytes of a blob (gzip, zstd, xz, bzip2 or none: the content decides), in chunks.

    Stops with an ImageError past ``max_bytes`` (see :func:`max_image_bytes`) or on corrupt data.
    Blobs that are neither compressed nor a tar archive are refused.
    """
    stream = _open_decoded(layer, _Budget(max_image_bytes(max_bytes)))
    if stream is None:
        return
    try:
        while True:
            chunk = stream.read(-1)
            if not chunk:
                return
            yield chunk
    finally:
        stream.close()


# --- reading tar members -------------------------------------------------------------------
#
# A small streaming tar reader instead of ``tarfile``: for images of many small files,
# tarfile's per-member cost (about 75 us to parse and re-emit a header) made Python the
# bottleneck in front of tar2sqfs.  It reads what tar writers produce (POSIX ustar and
# pax, GNU long names and sparse files, v7), checks every header checksum and every
# number, and hands member data on as zero-copy slices of the decompressed chunks.

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


# --- names and whiteouts -------------------------------------------------------------------


def clean_name(name: str, label: str, what: str = "member") -> str:
    """A member name as a path relative to the image root ("" is the root itself).

    Leading ``/`` and ``./``, empty and ``.`` components are dropped; ``..`` is resolved
    lexically and refused when it would leave the root.
    """
    if "\x00" in name:
        raise ImageError(f"layer {label}: {what} name {name!r} contains a NUL byte")
    if len(name) > MAX_NAME_BYTES // 4 and len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise ImageError(f"layer {label}: {what} name {name[:80]!r}... is longer than {MAX_NAME_BYTES} bytes")
    if "//" not in name and "/." not in name and not name.startswith((".", "/")) and not name.endswith("/") \
            and name and len(name) <= MAX_COMPONENT_BYTES // 4:
        return name  # already clean (the common case)
    parts: list[str] = []
    for part in name.split("/"):
        if not part or part == ".":
            continue
        if part == "..":
            if not parts:
                raise ImageError(f"layer {label}: {what} {name!r} points outside the image (..)")
            parts.pop()
            continue
        if len(part) > MAX_COMPONENT_BYTES // 4 and len(part.encode("utf-8", "surrogateescape")) > MAX_COMPONENT_BYTES:
            raise ImageError(f"layer {label}: {what} {name[:80]!r} has a component over {MAX_COMPONENT_BYTES} bytes")
        parts.append(part)
    return "/".join(parts)


_ENTRY, _WHITEOUT, _OPAQUE, _SKIP = range(4)


def _classify(path: str, label: str) -> tuple[int, str]:
    """(kind, path): an ordinary entry, a whiteout (of the returned path), an opaque marker (of
    the returned directory), or something to drop (aufs metadata, entries under a whiteout)."""
    if ".wh." not in path:
        return _ENTRY, path
    slash = path.rfind("/")
    parent, base = (path[:slash], path[slash + 1:]) if slash >= 0 else ("", path)
    if parent.startswith(WHITEOUT_PREFIX) or "/" + WHITEOUT_PREFIX in parent:
        return _SKIP, path
    if not base.startswith(WHITEOUT_PREFIX):
        return _ENTRY, path
    if base == OPAQUE_WHITEOUT:
        return _OPAQUE, parent
    if base.startswith(_AUFS_META_PREFIX):
        return _SKIP, path
    target = base[len(WHITEOUT_PREFIX):]
    if target in ("", ".", ".."):
        raise ImageError(f"layer {label}: invalid whiteout {path!r}")
    return _WHITEOUT, f"{parent}/{target}" if parent else target


def _parent(path: str) -> str:
    slash = path.rfind("/")
    return path[:slash] if slash >= 0 else ""


class _Index:
    """What layers 2..n do to the paths below them (the first pass).

    For a path P and a layer k, P from layer k is hidden when a higher layer
    - replaces P itself: a whiteout of P or a non-directory at P (``replace``), or a
      directory at P when layer k's entry is not a directory (``dirs``, explicit or implied);
    - kills P's subtree: a whiteout of, an opaque marker in, or a non-directory at a strict
      ancestor of P (``kill``).
    """

    __slots__ = ("replace", "dirs", "kill", "dir_meta")

    def __init__(self) -> None:
        self.replace: dict[str, int] = {}
        self.dirs: dict[str, int] = {}
        self.kill: dict[str, int] = {}
        self.dir_meta: dict[str, tuple[int, _Entry]] = {}

    def _implied_dirs(self, path: str, j: int) -> None:
        dirs = self.dirs
        while path:
            path = _parent(path)
            if not path or dirs.get(path) == j:
                return
            dirs[path] = j

    def add(self, j: int, layer: Layer, budget: _Budget) -> None:
        label = layer.label
        for entry, _data in _iter_layer(layer, budget):
            path = clean_name(entry.name, label)
            kind, target = _classify(path, label)
            if kind == _SKIP:
                continue
            self._implied_dirs(path, j)
            if kind == _WHITEOUT:
                self.replace[target] = j
                self.kill[target] = j
            elif kind == _OPAQUE:
                self.kill[target] = j
                if target:
                    self.dirs[target] = j
            elif entry.type == DIRTYPE:
                self.dirs[path] = j
                self.dir_meta[path] = (j, entry)
            else:
                self.replace[path] = j
                self.kill[path] = j

    def hidden(self, path: str, k: int, is_dir: bool) -> bool:
        """True when a layer above k deletes or replaces ``path`` of layer k."""
        if self.replace.get(path, -1) > k or (not is_dir and self.dirs.get(path, -1) > k):
            return True
        kill = self.kill
        while path:
            slash = path.rfind("/")
            path = path[:slash] if slash >= 0 else ""
            if kill.get(path, -1) > k:
                return True
        return False


# --- the merged stream ---------------------------------------------------------------------


def _out(name: str, src: _Entry, label: str, attrs: _Entry | None = None) -> _Entry:
    """The entry to write for ``name``: type, size and link from ``src``, attributes from ``attrs`` (or src)."""
    a = attrs or src
    if not (0 <= a.uid <= _MAX_ID and 0 <= a.gid <= _MAX_ID):
        raise ImageError(f"layer {label}: member {src.name!r} has out-of-range owner {a.uid}:{a.gid}")
    kind = src.type
    linkname = ""
    if kind == SYMTYPE:
        linkname = src.linkname
        if not linkname or "\x00" in linkname or len(linkname.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            raise ImageError(f"layer {label}: symlink {src.name!r} has an invalid target {linkname[:80]!r}")
    mtime = a.mtime if 0 <= a.mtime <= _MAX_MTIME else min(max(a.mtime, 0), _MAX_MTIME)
    return _Entry(name, kind, a.mode & 0o7777, a.uid, a.gid, src.size if kind == REGTYPE else 0, mtime, linkname,
                  a.uname, a.gname, src.devmajor, src.devminor, a.xattrs)


def _synthetic_dir(name: str, mtime: int) -> _Entry:
    return _Entry(name, DIRTYPE, 0o755, 0, 0, 0, mtime, "", "", "", 0, 0, None)


def merged_entries(
    layers: Iterable[Layer], *, max_bytes: int | None = None, default_mtime: int = 0
) -> Iterator[tuple[tarfile.TarInfo, BinaryIO | None]]:
    """The flattened image as (TarInfo, data) pairs, in an order tar2sqfs and tar accept.

    ``data`` is None except for regular files, where ``data.read()`` gives up to
    ``TarInfo.size`` bytes; read it before asking for the next pair.  Directories that no
    layer lists but that hold entries get mode 0755, root ownership and ``default_mtime``.
    """
    for entry, reader in _merged(layers, max_bytes, default_mtime):
        yield entry.tarinfo(), (_MemberFile(reader, entry.size) if reader is not None else None)  # type: ignore[misc]


def _merged(layers: Iterable[Layer], max_bytes: int | None, default_mtime: int
            ) -> Iterator[tuple[_Entry, _TarReader | None]]:
    layers = list(layers)
    limit = max_image_bytes(max_bytes)
    index: _Index | None = None
    if len(layers) > 1:
        index = _Index()
        budget = _Budget(limit)
        for j in range(1, len(layers)):
            index.add(j, layers[j], budget)
    return _Merger(layers, index, limit, default_mtime).entries()


class _Merger:
    """The second pass: emits visible entries bottom-up (see the module docstring)."""

    def __init__(self, layers: list[Layer], index: _Index | None, limit: int, default_mtime: int) -> None:
        self.layers = layers
        self.index = index
        self.limit = limit
        self.default_mtime = min(max(int(default_mtime), 0), _MAX_MTIME)
        self.dirs: set[str] = set()  # emitted directories ("" once the root is)
        self.files: set[str] = set()  # emitted non-directories
        # Hidden non-directories a later hard link may still name: path -> emitted path it is a
        # link to, or (layer, member ordinal) to re-read; carriers: copies made for links.
        self.ghosts: dict[str, str | tuple[int, int]] = {}
        self.carriers: dict[tuple[int, int], str] = {}
        self.reread_budget = _Budget(limit)
        self.rereads = 0

    def _dir_attrs(self, path: str, k: int) -> _Entry | None:
        """The topmost attributes of a directory that is visible from layer k on."""
        if self.index is None:
            return None
        meta = self.index.dir_meta.get(path)
        if meta is None or meta[0] < k or self.index.hidden(path, meta[0], True):
            return None
        return meta[1]

    def _parents(self, path: str, k: int, label: str) -> Iterator[tuple[_Entry, None]]:
        """Emit the missing ancestors of ``path`` (outermost first)."""
        missing = []
        parent = _parent(path)
        while parent and parent not in self.dirs:
            if parent in self.files:
                raise ImageError(f"layer {label}: member {path!r} lies under {parent!r}, which is not a directory")
            missing.append(parent)
            parent = _parent(parent)
        for p in reversed(missing):
            attrs = self._dir_attrs(p, k)
            self.dirs.add(p)
            yield (_out(p, attrs, label) if attrs is not None else _synthetic_dir(p, self.default_mtime)), None

    def entries(self) -> Iterator[tuple[_Entry, _TarReader | None]]:
        budget = _Budget(self.limit)
        index = self.index
        if index is not None and "" in index.dir_meta:  # the root's final attributes, first
            j, root = index.dir_meta[""]
            self.dirs.add("")
            yield _out("", root, self.layers[j].label), None
        dirs, files = self.dirs, self.files
        for k, layer in enumerate(self.layers):
            label = layer.label
            for ordinal, (entry, data) in enumerate(_iter_layer(layer, budget)):
                path = clean_name(entry.name, label)
                kind, _target = _classify(path, label)
                if kind != _ENTRY:
                    continue
                is_dir = entry.type == DIRTYPE
                if not path and not is_dir:
                    raise ImageError(f"layer {label}: member {entry.name!r} (the image root) is not a directory")
                if index is not None and index.hidden(path, k, is_dir):
                    self._remember_hidden(path, entry, k, ordinal, label)
                    continue
                if path in dirs or path in files:
                    continue  # listed twice in one layer: the first one wins
                if path and _parent(path) not in dirs:
                    yield from self._parents(path, k, label)
                if is_dir:
                    dirs.add(path)
                    yield _out(path, entry, label, self._dir_attrs(path, k) if index is not None else None), None
                elif entry.type == LNKTYPE:
                    yield from self._hardlink(path, entry, label)
                else:
                    files.add(path)
                    yield _out(path, entry, label), data

    def _remember_hidden(self, path: str, entry: _Entry, k: int, ordinal: int, label: str) -> None:
        if entry.type == DIRTYPE:
            return
        if entry.type == LNKTYPE:
            target = clean_name(entry.linkname, label, "hard link target")
            if target in self.files:
                self.ghosts[path] = target
            elif target in self.ghosts:
                self.ghosts[path] = self.ghosts[target]
        else:
            self.ghosts[path] = (k, ordinal)

    def _hardlink(self, path: str, entry: _Entry, label: str) -> Iterator[tuple[_Entry, _TarReader | None]]:
        target = clean_name(entry.linkname, label, "hard link target")
        if not target:
            raise ImageError(f"layer {label}: hard link {entry.name!r} points at the image root")
        if target not in self.files:
            ghost = self.ghosts.get(target)
            if isinstance(ghost, str):
                target = ghost
            elif ghost is not None and ghost in self.carriers:
                target = self.carriers[ghost]
            elif ghost is not None:
                yield from self._materialise(path, ghost, label)
                return
            elif target in self.dirs:
                raise ImageError(f"layer {label}: hard link {entry.name!r} points at directory {entry.linkname!r}")
            else:
                raise ImageError(
                    f"layer {label}: hard link {entry.name!r} points at {entry.linkname!r}, which is not in the "
                    "image before it"
                )
        out = _out(path, entry, label)
        out.linkname = target
        self.files.add(path)
        yield out, None

    def _materialise(self, path: str, ghost: tuple[int, int], label: str
                     ) -> Iterator[tuple[_Entry, _TarReader | None]]:
        """A link to a file a higher layer replaced: copy that file's old version under the link's name."""
        self.rereads += 1
        if self.rereads > MAX_REREADS:
            raise ImageError(f"layer {label}: more than {MAX_REREADS} hard links to replaced files; refusing it")
        k, ordinal = ghost
        layer = self.layers[k]
        members = _iter_layer(layer, self.reread_budget)
        try:
            for i, (entry, data) in enumerate(members):
                if i == ordinal:
                    self.files.add(path)
                    self.carriers[ghost] = path
                    yield _out(path, entry, layer.label), data
                    return
        finally:
            members.close()
        raise ImageError(f"layer {layer.label}: member #{ordinal} vanished when read again")


# --- writing a tar stream ------------------------------------------------------------------

_ZEROS = bytes(_BLOCK * 2)
_MAX_OCTAL7 = 8 ** 7
_MAX_OCTAL11 = 8 ** 11


def _header(e: _Entry) -> bytes:
    """The tar header for ``e``: plain ustar when it fits (the common case), else pax via tarfile."""
    name = e.name or "."
    if e.type == DIRTYPE:
        name += "/"
    if (e.xattrs or not name.isascii() or not e.linkname.isascii() or not e.uname.isascii()
            or not e.gname.isascii() or len(e.linkname) > 100 or len(e.uname) > 32 or len(e.gname) > 32
            or e.uid >= _MAX_OCTAL7 or e.gid >= _MAX_OCTAL7 or e.size >= _MAX_OCTAL11
            or e.devmajor >= _MAX_OCTAL7 or e.devminor >= _MAX_OCTAL7):
        return _pax_header(e)
    raw = name.encode()
    prefix = b""
    if len(raw) > 100:
        cut = raw.find(b"/", len(raw) - 101, len(raw) - 1)
        if cut <= 0 or cut > 155:
            return _pax_header(e)
        prefix, raw = raw[:cut], raw[cut + 1:]
    header = b"".join((
        raw.ljust(100, b"\x00"), b"%07o\x00%07o\x00%07o\x00%011o\x00%011o\x00        " % (
            e.mode, e.uid, e.gid, e.size, e.mtime),
        e.type, e.linkname.encode().ljust(100, b"\x00"), b"ustar\x0000",
        e.uname.encode().ljust(32, b"\x00"), e.gname.encode().ljust(32, b"\x00"),
        b"%07o\x00%07o\x00" % (e.devmajor, e.devminor), prefix.ljust(167, b"\x00"),
    ))
    return b"%s%06o\x00 %s" % (header[:148], _byte_sum(header), header[156:])


def _pax_header(e: _Entry) -> bytes:
    return e.tarinfo().tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _write_all(out: BinaryIO) -> Any:
    """out.write, made to finish short writes (raw, unbuffered files may write less)."""
    raw_write = out.write

    def write(data: bytes | memoryview) -> None:
        n = raw_write(data)
        if n is not None and n < len(data):
            view = memoryview(data)[n:]
            while view:
                view = view[raw_write(view) or 0:]

    return write


def write_merged_tar(
    layers: Iterable[Layer], out: BinaryIO, *, max_bytes: int | None = None, default_mtime: int = 0,
    stats: dict | None = None,
) -> int:
    """Write the flattened image to ``out`` as one POSIX tar stream; returns its size in bytes."""
    write = _write_all(out)
    total = 0
    entries = 0
    for entry, data in _merged(layers, max_bytes, default_mtime):
        header = _header(entry)
        write(header)
        total += len(header)
        entries += 1
        if data is not None:
            left = entry.size
            while left > 0:
                piece = data.read(min(left, _COPY))
                if not piece:
                    raise ImageError(f"layer {data.label}: member {data.member!r}: truncated tar data")
                write(piece)
                left -= len(piece)
            pad = -entry.size % _BLOCK
            if pad:
                write(_ZEROS[:pad])
            total += entry.size + pad
    write(_ZEROS)
    total += len(_ZEROS)
    if stats is not None:
        stats["entries"] = entries
        stats["tar_bytes"] = total
    return total


# --- squashfs ------------------------------------------------------------------------------


class _TimedWriter:
    """Counts the time spent blocked writing into tar2sqfs (it is the slower side then)."""

    __slots__ = ("_f", "waited")

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.waited = 0.0

    def write(self, data: bytes | memoryview) -> int:
        t = time.perf_counter()
        n = self._f.write(data)
        self.waited += time.perf_counter() - t
        return n


def _epoch(reproducible_epoch: int | None) -> int:
    if reproducible_epoch is not None:
        return int(reproducible_epoch)
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    if value:
        try:
            return int(value)
        except ValueError:
            raise ImageError(f"SOURCE_DATE_EPOCH={value!r} is not an integer")
    return 0


def _compressor_args(compression: str, level: int | None) -> list[str]:
    if compression not in COMPRESSIONS:
        raise ImageError(f"unknown squashfs compression {compression!r}", f"use one of: {', '.join(COMPRESSIONS)}")
    args = ["-c", compression]
    if level is None:
        level = DEFAULT_LEVELS.get(compression)
    elif compression not in _LEVEL_RANGES:
        raise ImageError(f"{compression} compression has no level")
    if level is not None:
        low, high = _LEVEL_RANGES[compression]
        if not low <= int(level) <= high:
            raise ImageError(f"{compression} level {level} is out of range ({low}..{high})")
        args += ["-X", f"level={int(level)}"]
    return args


def _last_line(raw: bytes) -> str:
    lines = [ln.strip() for ln in raw.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1] if lines else "no error message"


def tar_to_squashfs(
    layers: Iterable[Layer],
    out_path: str | os.PathLike[str],
    *,
    compression: str = DEFAULT_COMPRESSION,
    level: int | None = None,
    processors: int | None = None,
    reproducible_epoch: int | None = None,
    max_bytes: int | None = None,
    stats: dict | None = None,
) -> None:
    """Flatten ``layers`` into a new squashfs at ``out_path`` (atomically; overwrites).

    Owners, modes, device numbers and xattrs come from the layers even when not run as root.
    Directories no layer lists, and the root unless a layer lists ``./``, get root ownership,
    mode 0755 and the epoch as time: ``reproducible_epoch``, else ``SOURCE_DATE_EPOCH``,
    else 0; the same layers and epoch always give the same bytes.  With ``stats``, fills in
    ``merge_s`` (Python decompressing and merging), ``wait_s`` (blocked on tar2sqfs),
    ``finish_s`` (tar2sqfs after the end of input), ``total_s``, ``tar_bytes``, ``entries``.
    """
    from yurt.image.squashfs import thread_count

    out_path = os.fspath(out_path)
    comp_args = _compressor_args(compression, level)
    nproc = thread_count(processors)
    if nproc < 1:
        raise ImageError(f"tar2sqfs needs at least one processor, got {nproc}")
    epoch = min(max(_epoch(reproducible_epoch), 0), _MAX_MTIME)
    from yurt.programs import helper_env, require

    exe = require("tar2sqfs", "install squashfs-tools-ng", ImageError)
    directory = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(directory):
        raise ImageError(f"cannot write {out_path}: directory {directory} does not exist")
    tmp = os.path.join(directory, f".{os.path.basename(out_path)}.tmp-{os.urandom(6).hex()}")
    cmd = [exe, "-q", "-f", "--no-skip", *comp_args, "-j", str(nproc),
           "--defaults", f"uid=0,gid=0,mode=0755,mtime={epoch}", tmp]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err,
                                    bufsize=1 << 20, env=helper_env())
        except OSError as e:
            raise ImageError(f"cannot run tar2sqfs: {e.strerror}", "install squashfs-tools-ng")
        assert proc.stdin is not None
        writer = _TimedWriter(proc.stdin)  # type: ignore[arg-type]
        merge_stats: dict = {}
        ok = False
        try:
            broken = False
            try:
                write_merged_tar(layers, writer, max_bytes=max_bytes, default_mtime=epoch,  # type: ignore[arg-type]
                                 stats=merge_stats)
                t_end = time.perf_counter()
                proc.stdin.close()
            except BrokenPipeError:
                t_end = time.perf_counter()
                broken = True
            rc = proc.wait()
            if rc != 0 or broken:
                err.seek(0)
                detail = _last_line(err.read()) if rc != 0 else "it stopped reading its input"
                raise ImageError(f"tar2sqfs failed: {detail}")
            os.rename(tmp, out_path)
            ok = True
        finally:
            if not ok and proc.poll() is None:
                proc.kill()
            try:
                proc.stdin.close()
            except OSError:
                pass
            proc.wait()
            if not ok:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
    if stats is not None:
        total = time.perf_counter() - t0
        stats.update(merge_stats)
        stats.update(total_s=total, wait_s=writer.waited, merge_s=t_end - t0 - writer.waited,
                     finish_s=total - (t_end - t0))


def layers_to_sif(
    layers: Iterable[Layer],
    out_sif: str | os.PathLike[str],
    *,
    oci_config: dict,
    compression: str = DEFAULT_COMPRESSION,
    level: int | None = None,
    processors: int | None = None,
    labels: dict | None = None,
    reproducible_epoch: int | None = None,
    max_bytes: int | None = None,
    stats: dict | None = None,
) -> None:
    """Write a SIF at ``out_sif`` (atomically) holding the flattened layers.

    ``oci_config`` is the image configuration blob (``architecture``, ``config``, ...).  Its
    ``config`` member (Env, Entrypoint, Cmd, WorkingDir, User, Labels, ...) is stored as the
    ``oci-config.json`` object, as Apptainer does, and its architecture stamps the partition.
    ``labels`` default to the image's Labels (``{}`` writes none).
    """
    from yurt.image.pack import INSPECT_METADATA, OCI_CONFIG, _inspect_metadata, _json, write_sif_with_squashfs
    from yurt.image.sif import DataType, SifObject, arch_code, host_arch_code

    if not isinstance(oci_config, dict):
        raise ImageError("the image configuration is not a JSON object")
    from yurt.image import metadata

    config = metadata.oci_config({"config": oci_config.get("config")}, "the image configuration")
    arch = oci_config.get("architecture")
    part_arch = arch_code(arch) if isinstance(arch, str) and arch else host_arch_code()
    if labels is None:
        image_labels = config.get("Labels")
        labels = image_labels if isinstance(image_labels, dict) else {}
    out_sif = os.fspath(out_sif)
    directory = os.path.dirname(os.path.abspath(out_sif))
    if not os.path.isdir(directory):
        raise ImageError(f"cannot write {out_sif}: directory {directory} does not exist")
    epoch = _epoch(reproducible_epoch) if reproducible_epoch is not None or os.environ.get("SOURCE_DATE_EPOCH") \
        else None  # None: the SIF gets the current time and a random ID

    objects: list[SifObject] = []
    if labels:
        objects.append(SifObject(DataType.LABELS, _json(labels)))
    json_objects = {OCI_CONFIG: _json(config)}
    metadata = _inspect_metadata(None, labels or None, None, None)
    if metadata is not None:
        json_objects[INSPECT_METADATA] = _json(metadata)
    for name in sorted(json_objects):
        objects.append(SifObject(DataType.GENERIC_JSON, json_objects[name], name=name))

    write_sif_with_squashfs(
        out_sif, objects,
        lambda squash: tar_to_squashfs(layers, squash, compression=compression, level=level, processors=processors,
                                       reproducible_epoch=epoch, max_bytes=max_bytes, stats=stats),
        arch=part_arch, epoch=epoch)
