"""Images from ``docker save`` output: ``docker-archive:FILE[:REF]``.

The archive holds ``manifest.json``, listing each image's config and layer paths; REF picks an
image by one of its RepoTags (``busybox:latest``, matched as Docker normalises references) or
by position (``@0``).  ``docker save`` archives have no descriptors: their config is named by
its digest, and their layers are checked against the config's ``rootfs.diff_ids``
(uncompressed digests), or their ``blobs/sha256/<hex>`` names.  It is separate from the OCI
layout reader (:mod:`yurt.image.oci_layout`) because nothing in it is OCI: only the archive
reading and digest checks (:mod:`yurt.image.oci_blobs`) are shared.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from typing import Any

from yurt.errors import ImageError
from yurt.image import metadata
from yurt.image.layer_blob import Layer, iter_decompressed, sniff_compression
from yurt.image.oci_blobs import _DIGEST, _HASHES, _archive_name, _archive_store, _hash_range, _pread, _TarStore
from yurt.image.oci_layout import LocalImage, _check_config

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
