"""Flatten OCI image layers into one tar stream, streaming, without unpacking to disk.

An OCI image is a list of layer blobs (tar, tar+gzip, tar+zstd), each a changeset applied on
top of the ones below it (image-spec ``layer.md``).  Instead of extracting them into a
directory, which needs root to keep file owners and device nodes, :func:`write_merged_tar`
computes the *result* of applying them and writes it as one tar stream, which
:func:`yurt.image.tar2sqfs.tar_to_squashfs` feeds to ``tar2sqfs``.  This module is the merge;
the pieces under it are :mod:`yurt.image.layer_blob` (a blob's bytes, decompressed),
:mod:`yurt.image.tar_reader` (its members) and :mod:`yurt.image.layer_paths` (what a
member's name means).

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

* member names are normalised and unsafe ones refused (:mod:`yurt.image.layer_paths`);
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
* decompression bombs, corrupt compressed data (:mod:`yurt.image.layer_blob`) and corrupt
  tar headers (:mod:`yurt.image.tar_reader`) are refused where they are read.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

from yurt.errors import ImageError
from yurt.image.layer_blob import _COPY, Layer, _Budget, max_image_bytes
from yurt.image.layer_paths import _ENTRY, _OPAQUE, _SKIP, _WHITEOUT, MAX_NAME_BYTES, _classify, _parent, clean_name
from yurt.image.tar_reader import (
    _BLOCK,
    DIRTYPE,
    LNKTYPE,
    REGTYPE,
    SYMTYPE,
    _byte_sum,
    _Entry,
    _iter_layer,
    _MemberFile,
    _TarReader,
)

MAX_REREADS = 1000  # hard links whose target a higher layer replaced (each re-reads a layer)
_MAX_MTIME = (1 << 32) - 1  # squashfs stores unsigned 32-bit times
_MAX_ID = (1 << 32) - 1


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
