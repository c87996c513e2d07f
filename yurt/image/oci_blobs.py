"""The files of a local OCI source, and their blobs checked against their digests.

An OCI image layout directory, or a tar of one (``oci-archive``), or ``docker save`` output
(``docker-archive``) is read through a :class:`_Store`: named files as (file, offset, size)
byte ranges.  Nothing is extracted: layers are handed on as byte ranges of the layout's blob
files or of the archive itself (a plain tar stores members contiguously), so there is no path
to escape through and no copy of a multi-gigabyte image.  A compressed archive (``docker save |
gzip``) is first decompressed into one temporary tar file, as skopeo does.

Every blob is checked against the digest (and size) its descriptor gives before it is used
(:func:`_verified_blob`); a mismatch is an :class:`~yurt.errors.ImageError`.  This module is
what the image layout reader (:mod:`yurt.image.oci_layout`) and the docker-archive reader
(:mod:`yurt.image.docker_archive`) share; it knows nothing of manifests or platforms.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tarfile
import tempfile

from yurt.errors import ImageError
from yurt.image import metadata
from yurt.image.layer_blob import Layer, iter_decompressed, max_image_bytes, sniff_compression

MAX_JSON_BYTES = 16 << 20  # manifests, indexes and configs
MAX_ARCHIVE_MEMBERS = 1_000_000
MAX_LINK_HOPS = 16

_DIGEST = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")
_HASHES = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}


# --- where blobs live ----------------------------------------------------------------------


class _Store:
    """Named files of a layout or an archive, as (file, offset, size) byte ranges."""

    label: str

    def locate(self, name: str) -> tuple[str, int, int] | None:
        raise NotImplementedError

    def read(self, name: str, what: str, limit: int = MAX_JSON_BYTES) -> bytes:
        where = self.locate(name)
        if where is None:
            raise ImageError(f"{self.label}: {what} {name} is missing")
        path, offset, size = where
        if size > limit:
            raise ImageError(f"{self.label}: {what} {name} is {size} bytes, over the {limit}-byte limit")
        return _pread(path, offset, size, f"{self.label}: {what} {name}")

    def read_json(self, name: str, what: str) -> dict:
        return metadata.parse_object(self.read(name, what), f"{self.label}: {what} {name}")


class _DirStore(_Store):
    def __init__(self, root: str) -> None:
        self.root = root
        self.label = root

    def locate(self, name: str) -> tuple[str, int, int] | None:
        path = os.path.join(self.root, name)
        try:
            st = os.stat(path)
        except OSError:
            return None
        if not os.path.isfile(path):
            return None
        return path, 0, st.st_size


class _TarStore(_Store):
    """Members of an uncompressed tar, found by one pass over its headers."""

    def __init__(self, path: str, label: str) -> None:
        self.path = path
        self.label = label
        self.files: dict[str, tuple[int, int]] = {}
        self.links: dict[str, tuple[bool, str]] = {}  # name -> (symbolic, target)
        try:
            tf = tarfile.open(path, "r:", encoding="utf-8", errors="surrogateescape")
        except (OSError, tarfile.TarError) as e:
            raise ImageError(f"{label}: not a readable tar archive: {e}")
        count = 0
        try:
            while True:
                try:
                    ti = tf.next()
                except (OSError, tarfile.TarError, ValueError) as e:
                    raise ImageError(f"{label}: corrupt tar archive: {e}")
                if ti is None:
                    break
                tf.members.clear()
                count += 1
                if count > MAX_ARCHIVE_MEMBERS:
                    raise ImageError(f"{label}: more than {MAX_ARCHIVE_MEMBERS} members; refusing it")
                name = _archive_name(ti.name)
                if name is None:
                    continue  # '..' or the root: nothing we would look up
                self.links.pop(name, None)
                self.files.pop(name, None)
                if ti.isreg() and ti.sparse is None:
                    self.files[name] = (ti.offset_data, ti.size)
                elif ti.issym():
                    self.links[name] = (True, ti.linkname)
                elif ti.islnk():
                    self.links[name] = (False, ti.linkname)
        finally:
            tf.close()

    def locate(self, name: str) -> tuple[str, int, int] | None:
        for _hop in range(MAX_LINK_HOPS):
            if name in self.files:
                offset, size = self.files[name]
                return self.path, offset, size
            link = self.links.get(name)
            if link is None:
                return None
            symbolic, target = link
            if symbolic and not target.startswith("/"):
                target = os.path.dirname(name) + "/" + target
            resolved = _archive_name(target)
            if resolved is None:
                return None
            name = resolved
        raise ImageError(f"{self.label}: too many levels of links at {name}")


def _archive_name(name: str) -> str | None:
    """A member name normalised for lookup; None when it is the root or climbs out of it."""
    parts: list[str] = []
    for part in name.split("/"):
        if not part or part == ".":
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts) or None


def _pread(path: str, offset: int, size: int, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(size)
    except OSError as e:
        raise ImageError(f"{what}: cannot read: {e.strerror}")
    if len(data) != size:
        raise ImageError(f"{what}: truncated")
    return data


# --- digests -------------------------------------------------------------------------------


def _hash_range(path: str, offset: int, size: int, algorithm: str, what: str) -> str:
    h = _HASHES[algorithm]()
    try:
        with open(path, "rb", buffering=0) as f:
            f.seek(offset)
            left = size
            while left > 0:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    raise ImageError(f"{what}: truncated")
                h.update(chunk)
                left -= len(chunk)
    except OSError as e:
        raise ImageError(f"{what}: cannot read: {e.strerror}")
    return f"{algorithm}:{h.hexdigest()}"


def _check_digest(digest: object, what: str) -> str:
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise ImageError(f"{what}: invalid digest {str(digest)[:80]!r}")
    return digest


def _descriptor(doc: object, what: str) -> dict:
    if not isinstance(doc, dict):
        raise ImageError(f"{what}: descriptor is not a JSON object")
    _check_digest(doc.get("digest"), what)
    size = doc.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise ImageError(f"{what}: invalid size {size!r}")
    media = doc.get("mediaType", "")
    if not isinstance(media, str):
        raise ImageError(f"{what}: invalid mediaType")
    return doc


def _verified_blob(store: _Store, desc: dict, what: str) -> tuple[str, int, int]:
    """Locate the blob a descriptor names and check its size and digest."""
    digest = desc["digest"]
    algorithm, hexdigest = digest.split(":", 1)
    name = f"blobs/{algorithm}/{hexdigest}"
    where = store.locate(name)
    if where is None:
        hint = "a foreign layer, to be fetched from its URLs" if desc.get("urls") else None
        raise ImageError(f"{store.label}: {what} {digest} is missing ({name})", hint)
    path, offset, size = where
    expected = desc.get("size")
    if expected is not None and expected != size:
        raise ImageError(f"{store.label}: {what} {digest} is {size} bytes, its descriptor says {expected}")
    actual = _hash_range(path, offset, size, algorithm, f"{store.label}: {what} {digest}")
    if actual != digest:
        raise ImageError(f"{store.label}: {what} {digest} does not match its digest (content has {actual})")
    return where


def _blob_json(store: _Store, desc: dict, what: str) -> dict:
    if desc.get("size", 0) > MAX_JSON_BYTES:
        raise ImageError(f"{store.label}: {what} {desc['digest']} is too large ({desc['size']} bytes)")
    path, offset, size = _verified_blob(store, desc, what)
    if size > MAX_JSON_BYTES:
        raise ImageError(f"{store.label}: {what} {desc['digest']} is too large ({size} bytes)")
    raw = _pread(path, offset, size, f"{store.label}: {what}")
    return metadata.parse_object(raw, f"{store.label}: {what} {desc['digest']}")


# --- archives ------------------------------------------------------------------------------


def _archive_store(path: str, tmpdir: str | None, max_bytes: int | None) -> tuple[_TarStore, str | None]:
    """Index a tar archive; a compressed one is decompressed to a temporary file first."""
    try:
        # O_NONBLOCK: a FIFO named as an archive must not hang the open; it is refused just below.
        with open(os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ImageError(f"{path} is not a regular file, so not an image archive")
            head = f.read(tarfile.BLOCKSIZE)
    except OSError as e:
        raise ImageError(f"cannot open {path}: {e.strerror}")
    if sniff_compression(head) == "tar":
        return _TarStore(path, path), None
    workdir = tempfile.mkdtemp(prefix="yurt-archive-", dir=tmpdir)
    try:
        plain = os.path.join(workdir, "archive.tar")
        try:
            with open(plain, "wb") as out:
                for chunk in iter_decompressed(Layer(path, "", path), max_bytes=max_image_bytes(max_bytes)):
                    out.write(chunk)
        except OSError as e:
            raise ImageError(f"cannot decompress {path} into {workdir}: {e.strerror}")
        return _TarStore(plain, path), workdir
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
