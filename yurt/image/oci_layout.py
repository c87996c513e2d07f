"""Images from OCI image layouts: ``oci:DIR[:TAG]`` and ``oci-archive:FILE[:TAG]``.

An OCI image layout is a directory (``oci-layout``, ``index.json``, ``blobs/<alg>/<hex>``);
an ``oci-archive`` is a tar (optionally compressed) of one.  TAG is matched against the
``org.opencontainers.image.ref.name`` annotation (or containerd's ``io.containerd.image.name``);
without TAG the index must list one image.  Image indexes (multi-platform images) are resolved
to the manifest for ``linux`` and this machine's architecture, or for
``platform="os/arch[/variant]"``.  Also here: :class:`LocalImage`, what every local reader
returns, and the image config check the docker-archive reader (:mod:`yurt.image.docker_archive`)
shares.  The files and digest checks under it are :mod:`yurt.image.oci_blobs`.
"""

from __future__ import annotations

import os
import shutil

from yurt.errors import ImageError
from yurt.image.layer_blob import Layer
from yurt.image.oci_blobs import _archive_store, _blob_json, _descriptor, _DirStore, _Store, _verified_blob
from yurt.record import Record

MAX_INDEX_DEPTH = 4

MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_INDEX_TYPES = (MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST)
_MANIFEST_TYPES = (MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST)
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"


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
