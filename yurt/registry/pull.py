"""``yurt pull`` and ``yurt exec docker://``: a reference -> a cached, runnable SIF.

The cache is content-addressed (:mod:`yurt.store.cache`): blobs by digest, the
converted SIF by manifest digest.  A second pull of the same image downloads
and converts nothing; two images sharing layers share blobs; many processes
asking at once (every rank of a job) convert once, under a lock, and all find
the result.  Conversion streams the merged layers straight into squashfs
(:mod:`yurt.image.layers`), never unpacking the image to disk.

Running is :func:`open_pulled`: the cached SIF, except under a site policy, where the cache (the
user's to write) is not trusted and the image is verified and converted in memory for each run
(:mod:`yurt.registry.private`); ``yurt pull`` itself fills the cache as always.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from yurt.errors import ImageError, UsageError
from yurt.image import metadata
from yurt.image.source import PULLED_SCHEMES
from yurt.record import Record
from yurt.registry.fetch import SIF_LAYER_TYPES, PullOptions, fetch_blobs, resolve_manifest

__all__ = ["PullOptions", "PullResult", "is_pullable", "open_pulled", "pull"]

REMOTE_SCHEMES = ("docker://", "oras://")
LOCAL_SCHEMES = tuple(s for s in PULLED_SCHEMES if s not in REMOTE_SCHEMES)


class PullResult(Record):
    __slots__ = ("sif", "manifest_digest", "downloaded_bytes", "cached", "timings")
    _defaults = {"downloaded_bytes": 0, "cached": False, "timings": dict}
    sif: Path
    manifest_digest: str
    downloaded_bytes: int
    cached: bool
    timings: dict


def is_pullable(ref: str) -> bool:
    return ref.startswith(PULLED_SCHEMES)


def open_pulled(ref_text: str, options: PullOptions | None = None):
    """``yurt exec|run|shell|instance start REF`` for a pullable REF: the Image to run.

    Without a site policy, the cached SIF (:func:`pull` first).  Under one the cache is the user's, so
    nothing in it is trusted: :mod:`yurt.registry.private` verifies and converts in memory instead.
    """
    from yurt.programs import policy_in_force

    if policy_in_force():
        from yurt.registry.private import open_private

        return open_private(ref_text, options or PullOptions())
    from yurt.image.source import open_image

    return open_image(str(pull(ref_text, options).sif))


def pull(ref_text: str, options: PullOptions | None = None, store=None) -> PullResult:
    """Make ``ref_text`` available as a SIF in the cache and return where it is."""
    from yurt.store.cache import Store

    options = options or PullOptions()
    store = store or Store()
    if ref_text.startswith(LOCAL_SCHEMES):
        return _pull_local(ref_text, options, store)
    if ref_text.startswith(REMOTE_SCHEMES):
        return _pull_remote(ref_text, options, store)
    raise UsageError(f"cannot pull {ref_text!r}", "use docker://, oras://, oci:, oci-archive: or docker-archive:")


# --- local sources ------------------------------------------------------------

def _pull_local(ref_text: str, options: PullOptions, store) -> PullResult:
    from yurt.image import oci_local

    with oci_local.open_local(ref_text, platform=options.platform()) as image:
        return _convert(store, image.manifest_digest, image.config, image.layers, options, downloaded=0)


# --- registries ---------------------------------------------------------------

def _pull_remote(ref_text: str, options: PullOptions, store) -> PullResult:
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    ref, client, doc, digest = resolve_manifest(ref_text, options, store)
    timings["manifest"] = time.monotonic() - t0
    if ref.transport == "oras":
        return _pull_oras(client, ref, doc, digest, options, store)
    if store.has_sif(digest) and not options.force:
        return PullResult(store.sif_path(digest), digest, 0, True, timings)

    layers_desc = doc.get("layers") or []
    config_desc = doc.get("config") or {}
    if not layers_desc or "digest" not in config_desc:
        raise ImageError(f"{ref}: the manifest lists no layers or no config")
    t0 = time.monotonic()
    downloaded = fetch_blobs(client, ref.repository, [config_desc, *layers_desc], store, options)
    timings["download"] = time.monotonic() - t0
    config = metadata.parse_object(store.blob_path(config_desc["digest"]).read_bytes(), f"the config of {ref}")
    from yurt.image.layer_blob import Layer

    layers = [Layer(path=store.blob_path(d["digest"]), media_type=d.get("mediaType", ""), digest=d["digest"])
              for d in layers_desc]
    result = _convert(store, digest, config, layers, options, downloaded)
    result.timings.update(timings)
    return result


def _convert(store, manifest_digest: str, config: dict, layers: list, options: PullOptions,
             downloaded: int) -> PullResult:
    from yurt.image.tar2sqfs import layers_to_sif

    final = store.sif_path(manifest_digest)
    if final.exists() and not options.force:
        return PullResult(final, manifest_digest, downloaded, True)
    stats: dict[str, float] = {}

    def produce(tmp: Path) -> None:
        t0 = time.monotonic()
        layers_to_sif(layers, tmp, oci_config=config, compression=options.compression, stats=stats)
        stats["convert"] = time.monotonic() - t0

    if options.force:
        final.unlink(missing_ok=True)
    from contextlib import ExitStack

    with ExitStack() as held:  # a concurrent `yurt cache clean` must not delete a layer mid-conversion
        for layer in layers:
            if getattr(layer, "digest", None):
                held.enter_context(store.lock(store.lock_name(layer.digest), shared=True))
        store.ensure_sif(manifest_digest, produce)
    return PullResult(final, manifest_digest, downloaded, False, stats)


def _pull_oras(client, ref, manifest: dict, digest: str, options: PullOptions, store) -> PullResult:
    """An ORAS artifact whose one layer is a SIF file (what ``apptainer push oras://`` makes)."""
    layers = [d for d in manifest.get("layers") or [] if d.get("mediaType") in SIF_LAYER_TYPES]
    if len(layers) != 1:
        raise ImageError(f"{ref} is not a SIF artifact (expected one layer of type {SIF_LAYER_TYPES[0]})")
    layer = layers[0]
    downloaded = fetch_blobs(client, ref.repository, [layer], store, options)
    final = store.sif_path(digest)
    if options.force:
        final.unlink(missing_ok=True)

    def produce(tmp: Path) -> None:
        blob = store.blob_path(layer["digest"])
        try:
            os.link(blob, tmp)  # same store, same file system: no copy of a multi-GB SIF
        except OSError:
            import shutil

            shutil.copyfile(blob, tmp)

    store.ensure_sif(digest, produce)
    return PullResult(final, digest, downloaded, False)

