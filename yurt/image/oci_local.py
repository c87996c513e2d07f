"""Read OCI images from local sources, for :func:`yurt.image.tar2sqfs.layers_to_sif`.

Three sources, named as skopeo and Apptainer name them:

``oci:DIR[:TAG]``
    an OCI image layout directory (``oci-layout``, ``index.json``, ``blobs/<alg>/<hex>``).
    TAG is matched against the ``org.opencontainers.image.ref.name`` annotation (or
    containerd's ``io.containerd.image.name``); without TAG the index must list one image.
``oci-archive:FILE[:TAG]``
    a tar of such a layout.
``docker-archive:FILE[:REF]``
    ``docker save`` output: ``manifest.json`` listing each image's config and layer paths.
    REF picks an image by one of its RepoTags (``busybox:latest``) or by position (``@0``).

Image indexes (multi-platform images) are resolved to the manifest for ``linux`` and this
machine's architecture, or for ``platform="os/arch[/variant]"``.

Nothing is extracted: layers are handed on as byte ranges of the layout's blob files or of
the archive itself (a plain tar stores members contiguously), so there is no path to escape
through and no copy of a multi-gigabyte image.  A compressed archive (``docker save | gzip``)
is first decompressed into one temporary tar file, as skopeo does.

Every blob is checked against the digest (and size) its descriptor gives before it is used;
a mismatch is an :class:`~yurt.errors.ImageError`.  ``docker save`` archives have no
descriptors: their config is named by its digest, and their layers are checked against the
config's ``rootfs.diff_ids`` (uncompressed digests), or their ``blobs/sha256/<hex>`` names.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tarfile
import tempfile
from typing import Any

from yurt.errors import ImageError
from yurt.image import metadata
from yurt.image.layer_blob import Layer, iter_decompressed, max_image_bytes, sniff_compression
from yurt.record import Record

MAX_JSON_BYTES = 16 << 20  # manifests, indexes and configs
MAX_ARCHIVE_MEMBERS = 1_000_000
MAX_INDEX_DEPTH = 4
MAX_LINK_HOPS = 16

MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_INDEX_TYPES = (MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST)
_MANIFEST_TYPES = (MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST)
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"

_DIGEST = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")
_HASHES = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}
_TRANSPORTS = ("oci-archive", "docker-archive", "oci")


class LocalImage(Record):
    """An image read from a local source.

    ``config`` is the image configuration (``architecture``, ``config``, ``rootfs``, ...),
    ``layers`` the verified layer blobs bottom-up, ``manifest_digest`` the digest of the image
    manifest (for ``docker-archive``, which has none, the config digest: Docker's image ID).
    ``workdir`` is a temporary directory the layers live in, or None; use the image as a
    context manager, or call :meth:`cleanup`, to remove it.
    """

    __slots__ = ("config", "layers", "manifest_digest", "workdir")
    _defaults = {"workdir": None}
    config: dict
    layers: list[Layer]
    manifest_digest: str
    workdir: str | None

    def cleanup(self) -> None:
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> LocalImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


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


# --- platforms -----------------------------------------------------------------------------


def host_platform() -> tuple[str, str, str]:
    """(os, architecture, variant) of this machine in OCI terms, e.g. ("linux", "arm64", "v8")."""
    from yurt.image.sif import ARCH_NAMES, host_arch_code

    arch = ARCH_NAMES.get(host_arch_code(), "unknown")
    variant = ""
    if arch == "arm64":
        variant = "v8"
    elif arch == "arm":
        machine = os.uname().machine
        variant = "v" + machine[4] if machine.startswith("armv") and machine[4:5].isdigit() else "v7"
    return "linux", arch, variant


def _parse_platform(platform: str | None) -> tuple[str, str, str]:
    if platform is None:
        return host_platform()
    parts = platform.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ImageError(f"invalid platform {platform!r}", "use os/arch[/variant], e.g. linux/arm64")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else ""


def _platform_of(desc: dict) -> tuple[str, str, str]:
    p = desc.get("platform")
    if not isinstance(p, dict):
        return "", "", ""
    return str(p.get("os", "")), str(p.get("architecture", "")), str(p.get("variant", "") or "")


def _select_platform(manifests: list, platform: str | None, what: str) -> dict:
    want_os, want_arch, want_variant = _parse_platform(platform)
    candidates = []
    for i, doc in enumerate(manifests):
        desc = _descriptor(doc, f"{what}: manifests[{i}]")
        annotations = desc.get("annotations") or {}
        if isinstance(annotations, dict) and annotations.get("vnd.docker.reference.type") == "attestation-manifest":
            continue
        os_, arch, variant = _platform_of(desc)
        if os_ == want_os and arch == want_arch:
            candidates.append((variant, desc))
    if not candidates:
        available = sorted({"/".join(x for x in _platform_of(d) if x) for d in manifests if isinstance(d, dict)})
        raise ImageError(f"{what}: no image for {want_os}/{want_arch}",
                         f"available: {', '.join(a for a in available if a) or 'none'}")
    for variant, desc in candidates:  # exact variant first, then an unspecified one, then any
        if variant == want_variant:
            return desc
    for variant, desc in candidates:
        if not variant or (want_arch == "arm64" and variant == "v8"):
            return desc
    if want_variant and platform is not None:
        raise ImageError(f"{what}: no image for variant {want_variant} of {want_os}/{want_arch}")
    return candidates[0][1]


# --- OCI image layouts ---------------------------------------------------------------------


def _ref_names(desc: dict) -> list[str]:
    annotations = desc.get("annotations") or {}
    if not isinstance(annotations, dict):
        return []
    return [v for v in (annotations.get(REF_NAME), annotations.get(CONTAINERD_NAME)) if isinstance(v, str)]


def _read_layout(store: _Store, tag: str | None, platform: str | None) -> tuple[dict, list[Layer], str]:
    layout = store.read_json("oci-layout", "layout marker")
    version = layout.get("imageLayoutVersion")
    if not isinstance(version, str) or not version.startswith("1."):
        raise ImageError(f"{store.label}: unsupported OCI image layout version {version!r}")
    index = store.read_json("index.json", "image index")
    manifests = index.get("manifests")
    if not isinstance(manifests, list) or not manifests:
        raise ImageError(f"{store.label}: index.json lists no images")
    descs = [_descriptor(d, f"{store.label}: index.json manifests[{i}]") for i, d in enumerate(manifests)]
    if tag is not None:
        chosen = [d for d in descs if tag in _ref_names(d)]
        if not chosen:
            names = sorted({n for d in descs for n in _ref_names(d)})
            raise ImageError(f"{store.label}: no image tagged {tag!r}", f"tags: {', '.join(names) or 'none'}")
        desc = chosen[0]
    elif len(descs) == 1:
        desc = descs[0]
    elif all(not _ref_names(d) and isinstance(d.get("platform"), dict) for d in descs):
        desc = _select_platform(descs, platform, f"{store.label}: index.json")
    else:
        names = sorted({n for d in descs for n in _ref_names(d)})
        raise ImageError(f"{store.label}: index.json lists {len(descs)} images; name one with :TAG",
                         f"tags: {', '.join(names) or 'none'}")
    return _resolve(store, desc, platform, 0)


def _resolve(store: _Store, desc: dict, platform: str | None, depth: int) -> tuple[dict, list[Layer], str]:
    media = desc.get("mediaType", "")
    what = "image index" if media in _INDEX_TYPES else "manifest"
    doc = _blob_json(store, desc, what)
    media = media or doc.get("mediaType", "") or ("index" if "manifests" in doc else "manifest")
    if media in _INDEX_TYPES or media == "index":
        if depth >= MAX_INDEX_DEPTH:
            raise ImageError(f"{store.label}: image indexes nested too deeply")
        manifests = doc.get("manifests")
        if not isinstance(manifests, list):
            raise ImageError(f"{store.label}: image index {desc['digest']} has no manifests list")
        child = _select_platform(manifests, platform, f"{store.label}: image index {desc['digest']}")
        return _resolve(store, child, platform, depth + 1)
    if media not in _MANIFEST_TYPES and media != "manifest":
        raise ImageError(f"{store.label}: {desc['digest']} has unsupported media type {media!r}")
    where = f"{store.label}: manifest {desc['digest']}"
    config_desc = _descriptor(doc.get("config"), f"{where}: config")
    raw_layers = doc.get("layers")
    if not isinstance(raw_layers, list):
        raise ImageError(f"{where}: no layers list")
    config = _blob_json(store, config_desc, "image config")
    layers = []
    for i, raw in enumerate(raw_layers):
        ldesc = _descriptor(raw, f"{where}: layers[{i}]")
        path, offset, size = _verified_blob(store, ldesc, "layer")
        layers.append(Layer(path, ldesc.get("mediaType", ""), ldesc["digest"], offset, size))
    _check_config(config, len(layers), where)
    return config, layers, desc["digest"]


def _check_config(config: dict, nlayers: int, where: str) -> None:
    os_name = config.get("os")
    if os_name not in (None, "", "linux"):
        raise ImageError(f"{where}: the image is for {os_name!r}, not linux")
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if isinstance(diff_ids, list) and len(diff_ids) != nlayers:
        raise ImageError(f"{where}: the config lists {len(diff_ids)} layers, the manifest {nlayers}")


def read_oci_layout(path: str | os.PathLike[str], tag: str | None = None, *, platform: str | None = None
                    ) -> LocalImage:
    """An image from an OCI image layout directory."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ImageError(f"{path}: not an OCI image layout directory")
    config, layers, digest = _read_layout(_DirStore(path), tag, platform)
    return LocalImage(config, layers, digest)


# --- archives ------------------------------------------------------------------------------


def _archive_store(path: str, tmpdir: str | None, max_bytes: int | None) -> tuple[_TarStore, str | None]:
    """Index a tar archive; a compressed one is decompressed to a temporary file first."""
    try:
        with open(path, "rb") as f:
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


def read_oci_archive(path: str | os.PathLike[str], tag: str | None = None, *, platform: str | None = None,
                     tmpdir: str | None = None, max_bytes: int | None = None) -> LocalImage:
    """An image from a tar (optionally compressed) of an OCI image layout."""
    store, workdir = _archive_store(os.fspath(path), tmpdir, max_bytes)
    try:
        config, layers, digest = _read_layout(store, tag, platform)
    except BaseException:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    return LocalImage(config, layers, digest, workdir)


_BLOB_NAME = re.compile(r"^blobs/(sha256|sha512)/([a-f0-9]+)$")
_LEGACY_CONFIG = re.compile(r"^([a-f0-9]{64})\.json$")


def _named_digest(name: str) -> str | None:
    """The digest a docker-archive member name states: blobs/sha256/<hex> or <hex>.json."""
    m = _BLOB_NAME.match(name)
    if m and _DIGEST.match(f"{m.group(1)}:{m.group(2)}"):
        return f"{m.group(1)}:{m.group(2)}"
    m = _LEGACY_CONFIG.match(name)
    return f"sha256:{m.group(1)}" if m else None


def _docker_entry(manifest: list, ref: str | None, label: str) -> dict:
    entries = [e for e in manifest if isinstance(e, dict)]
    if not entries:
        raise ImageError(f"{label}: manifest.json lists no images")
    if ref is None:
        if len(entries) > 1:
            tags = sorted(t for e in entries for t in (e.get("RepoTags") or []) if isinstance(t, str))
            raise ImageError(f"{label}: the archive holds {len(entries)} images; name one with :REF or :@N",
                             f"tags: {', '.join(tags) or 'none'}")
        return entries[0]
    if ref.startswith("@"):
        if not (ref[1:].isascii() and ref[1:].isdigit()) or int(ref[1:]) >= len(entries):
            raise ImageError(f"{label}: no image {ref} (the archive holds {len(entries)})")
        return entries[int(ref[1:])]
    wanted = {ref, _normalise_ref(ref)}
    for e in entries:
        tags = [t for t in (e.get("RepoTags") or []) if isinstance(t, str)]
        if wanted & ({*tags, *map(_normalise_ref, tags)}):
            return e
    tags = sorted(t for e in entries for t in (e.get("RepoTags") or []) if isinstance(t, str))
    raise ImageError(f"{label}: no image tagged {ref!r}", f"tags: {', '.join(tags) or 'none'}")


def _normalise_ref(ref: str) -> str:
    """docker.io/library/busybox:latest for busybox, busybox:latest, library/busybox, ..."""
    name, tag = ref, "latest"
    last = ref.rsplit("/", 1)[-1]
    if "@" not in ref and ":" in last:
        name, tag = ref.rsplit(":", 1)
    first = name.split("/", 1)[0]
    if "/" not in name or ("." not in first and ":" not in first and first != "localhost"):
        name = "docker.io/" + name
    if name.startswith("docker.io/") and name.count("/") == 1:
        name = "docker.io/library/" + name[len("docker.io/"):]
    return f"{name}:{tag}"


def _verify_docker_layer(store: _TarStore, name: str, diff_id: object, where: str, max_bytes: int | None
                         ) -> tuple[str, int, int, str]:
    """Check a docker-archive layer against its name or its diff_id; returns (path, offset, size, digest)."""
    located = store.locate(name)
    if located is None:
        raise ImageError(f"{where}: layer {name} is missing")
    path, offset, size = located
    named = _named_digest(name)
    if named is not None:  # blobs/<alg>/<hex>: content-addressed
        algorithm = named.split(":", 1)[0]
        actual = _hash_range(path, offset, size, algorithm, f"{where}: layer {name}")
        if actual != named:
            raise ImageError(f"{where}: layer {name} does not match its digest (content has {actual})")
        return path, offset, size, named
    if not isinstance(diff_id, str) or not _DIGEST.match(diff_id):
        raise ImageError(f"{where}: layer {name} has no digest to check it against")
    algorithm = diff_id.split(":", 1)[0]
    digest = _hash_range(path, offset, size, algorithm, f"{where}: layer {name}")
    if digest == diff_id:  # an uncompressed layer, as docker save writes them
        return path, offset, size, digest
    if sniff_compression(_pread(path, offset, min(size, 16), f"{where}: layer {name}")) == "tar":
        raise ImageError(f"{where}: layer {name} does not match its diff_id {diff_id} (content has {digest})")
    # A compressed layer: its diff_id is the digest of the uncompressed tar.
    h = _HASHES[algorithm]()
    for chunk in iter_decompressed(Layer(path, "", name, offset, size), max_bytes=max_bytes):
        h.update(chunk)
    if f"{algorithm}:{h.hexdigest()}" != diff_id:
        raise ImageError(f"{where}: layer {name} does not match its diff_id {diff_id}")
    return path, offset, size, digest


def read_docker_archive(path: str | os.PathLike[str], ref: str | None = None, *, tmpdir: str | None = None,
                        max_bytes: int | None = None) -> LocalImage:
    """An image from ``docker save`` output (optionally compressed)."""
    path = os.fspath(path)
    store, workdir = _archive_store(path, tmpdir, max_bytes)
    try:
        raw = store.read("manifest.json", "docker manifest")
        manifest = metadata.parse(raw, f"{path}: manifest.json")
        if not isinstance(manifest, list):
            raise ImageError(f"{path}: manifest.json is not a list", "is this a docker save archive?")
        entry = _docker_entry(manifest, ref, path)
        config_name, layer_names = entry.get("Config"), entry.get("Layers")
        if not isinstance(config_name, str) or not isinstance(layer_names, list) \
                or not all(isinstance(n, str) for n in layer_names):
            raise ImageError(f"{path}: manifest.json entry without Config and Layers")
        config_name = _archive_name(config_name) or ""
        config_raw = store.read(config_name, "image config")
        config_digest = "sha256:" + hashlib.sha256(config_raw).hexdigest()
        named = _named_digest(config_name)
        if named is not None:
            algorithm = named.split(":", 1)[0]
            actual = f"{algorithm}:{_HASHES[algorithm](config_raw).hexdigest()}"
            if actual != named:
                raise ImageError(f"{path}: image config {config_name} does not match its digest (content has "
                                 f"{actual})")
        config = metadata.parse_object(config_raw, f"{path}: image config {config_name}")
        where = f"{path}: image {config_digest}"
        _check_config(config, len(layer_names), where)
        rootfs = config.get("rootfs")
        diff_ids: list[Any] = (rootfs.get("diff_ids") if isinstance(rootfs, dict) else None) or []
        layers = []
        for i, raw_name in enumerate(layer_names):
            name = _archive_name(raw_name) or ""
            diff_id = diff_ids[i] if i < len(diff_ids) else None
            lpath, offset, size, digest = _verify_docker_layer(store, name, diff_id, where, max_bytes)
            layers.append(Layer(lpath, "", digest, offset, size))
    except BaseException:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    return LocalImage(config, layers, config_digest, workdir)


# --- source strings ------------------------------------------------------------------------


def parse_source(source: str) -> tuple[str, str, str | None]:
    """Split ``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]`` or ``docker-archive:FILE[:REF]``.

    A path that exists is taken whole, so paths with colons work; otherwise the tag is what
    follows the last colon (``oci``) or the first colon after an existing file (``docker-archive``,
    whose references contain colons themselves).
    """
    for transport in _TRANSPORTS:
        if source.startswith(transport + ":"):
            rest = source[len(transport) + 1:]
            break
    else:
        raise ImageError(f"unknown image source {source!r}",
                         "use oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker-archive:FILE[:REF]")
    if not rest:
        raise ImageError(f"image source {source!r} names no path")
    if os.path.exists(rest) or ":" not in rest:
        return transport, rest, None
    if transport == "docker-archive":
        pos = rest.find(":")
        while pos >= 0:
            if os.path.exists(rest[:pos]):
                return transport, rest[:pos], rest[pos + 1:] or None
            pos = rest.find(":", pos + 1)
        return transport, rest, None
    path, _, tag = rest.rpartition(":")
    if "/" in tag:  # a colon inside the path, not a tag
        return transport, rest, None
    return transport, path, tag or None


def open_local(source: str, *, platform: str | None = None, tmpdir: str | None = None,
               max_bytes: int | None = None) -> LocalImage:
    """Read an image from ``oci:``, ``oci-archive:`` or ``docker-archive:`` ``source``."""
    transport, path, ref = parse_source(source)
    if not os.path.exists(path):
        raise ImageError(f"{path}: no such file or directory")
    if transport == "oci":
        return read_oci_layout(path, ref, platform=platform)
    if transport == "oci-archive":
        return read_oci_archive(path, ref, platform=platform, tmpdir=tmpdir, max_bytes=max_bytes)
    return read_docker_archive(path, ref, tmpdir=tmpdir, max_bytes=max_bytes)
