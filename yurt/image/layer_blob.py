"""One layer blob (:class:`Layer`) and its bytes decompressed, within the bomb limits.

An image layer reaches yurt as a blob: a registry download, a file of an OCI layout, or a byte
range of a ``docker save`` archive.  This module turns such a blob into the tar byte stream it
holds, for the tar reader (:mod:`yurt.image.tar_reader`) and for digest checks of uncompressed
layers (:func:`iter_decompressed`, used by :mod:`yurt.image.oci_local`).  It is separate from
the tar parsing and the layer merge because it knows nothing of tar members: only of
compression formats, helper processes and byte counts.

The compression of each blob is detected from its magic bytes, not only from its media type,
since registries and tools mislabel layers: gzip, xz and bzip2 are decoded in-process (zlib,
lzma, bz2), zstd through the ``zstd`` program.  Decompression runs in a background thread
(:class:`_Prefetch`) a few MiB ahead of the tar parser.

Hostile input: a decompression bomb stops at ``max_bytes`` of uncompressed tar (default
64 GiB, or ``YURT_MAX_IMAGE_BYTES``), and an archive of more than 10 million members is
refused (:class:`_Budget`); truncated or corrupt compressed data and encrypted layers are
errors (:class:`~yurt.errors.ImageError`) naming the layer, not a silently shortened image.
"""

from __future__ import annotations

import os
import queue
import subprocess
import tarfile
import tempfile
import threading
import zlib
from collections.abc import Iterator
from typing import Any

from yurt.errors import ImageError
from yurt.record import Record

DEFAULT_MAX_BYTES = 64 << 30  # uncompressed tar bytes per pass over an image
MAX_MEMBERS = 10_000_000  # tar members per pass over an image
_CHUNK = 1 << 22  # compressed bytes read at a time
_COPY = 1 << 20  # member data copied at a time
_PREFETCH = 1 << 22  # decompressed bytes handed over at a time

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
