"""Under a site policy: registry and local OCI images run from private memory copies, never the cache.

Without a policy ``yurt exec docker://REF`` runs the SIF that :func:`yurt.registry.pull.pull` keeps in
the user's image cache (``~/.cache/yurt``).  The user can write that cache: replace ``sif/<digest>``,
or a layer blob, with any image and yurt would run it as though it came from the allowed registry.
So under a policy (:func:`yurt.programs.policy_in_force`) nothing in the cache is trusted:

* the manifest is resolved at the registry on every run, as without a policy (the registry, which the
  site allows, maps the tag to a digest; the manifest's own digest is checked by the client);
* the image config and each layer blob are copied from the store (downloaded into it first when
  missing, as ``yurt pull`` does) into an anonymous memory file, and the digest is computed from the
  bytes copied and must be the manifest's, size included (:func:`yurt.store.memcopy.verified_copy`).
  A blob that does not match is a damaged cache, which is repaired: it is deleted and downloaded
  again, and copied and checked again; only a second mismatch is an error;
* the layers are converted (:func:`yurt.image.tar2sqfs.tar_to_squashfs_fd`) into another memory file,
  which ``tar2sqfs`` writes through ``/proc/self/fd/N`` of its inherited descriptor, and that squashfs
  is what the loop device, ``squashfuse`` or ``unsquashfs`` get, as a sealed descriptor.  No SIF is
  written to the cache: the image config the launcher needs is taken from the verified config blob;
* an ORAS artifact (one SIF as its layer) is copied and checked likewise, and that copy runs;
* a local source (``oci:DIR``, ``oci-archive:``, ``docker-archive:``; its path is checked by
  ``allowed_image_paths``) is read and checked as ``yurt pull`` reads it, and its layers are copied
  and checked into memory at once (a compressed archive is unpacked to a temporary directory of the
  user's, which is then removed); its conversion goes into memory too.

The conversion of a registry or local image is deferred (:attr:`yurt.image.source.Image.produce`)
until its root file system is needed: planning a join to an instance, or a ``--sharens`` rank that
joins the node's container, only resolves the manifest and reads the config.

The price, per container: the compressed layers and the squashfs in memory while converting, then
the squashfs for as long as the container runs (a node's ``--sharens`` ranks share one, an instance
holds one), and the conversion's time on every run (README, "Site policy").
"""

from __future__ import annotations

import os

from yurt.errors import ImageError
from yurt.image import metadata
from yurt.image.source import Image, open_image_fd
from yurt.registry.fetch import SIF_LAYER_TYPES, PullOptions, fetch_blobs, resolve_manifest
from yurt.store.memcopy import DigestMismatch, memfd, seal, verified_copy

MAX_CONFIG_BYTES = 16 << 20  # as for a local source's JSON blobs (yurt.image.oci_blobs)


def open_private(ref_text: str, options: PullOptions, store=None) -> Image:
    """The image ``ref_text`` names, from verified memory copies (see the module docstring)."""
    from yurt.store.cache import Store

    if ref_text.startswith(("oci:", "oci-archive:", "docker-archive:")):
        return _local(ref_text, options)
    store = store or Store()
    ref, client, doc, digest = resolve_manifest(ref_text, options, store)
    blobs = _Blobs(client, ref.repository, store, options)
    if ref.transport == "oras":
        layers = [d for d in doc.get("layers") or [] if isinstance(d, dict) and d.get("mediaType") in SIF_LAYER_TYPES]
        if len(layers) != 1:
            raise ImageError(f"{ref} is not a SIF artifact (expected one layer of type {SIF_LAYER_TYPES[0]})")
        fd = blobs.copy(layers[0], "the SIF")
        try:
            return open_image_fd(fd, ref_text)
        except BaseException:
            os.close(fd)
            raise
    layers_desc = doc.get("layers") or []
    config_desc = doc.get("config") or {}
    if not isinstance(layers_desc, list) or not layers_desc or not isinstance(config_desc, dict) \
            or "digest" not in config_desc:
        raise ImageError(f"{ref}: the manifest lists no layers or no config")
    for d in layers_desc:
        _check_descriptor(d, str(ref))
    config = _config(blobs, config_desc, str(ref))

    def copies() -> list:
        from yurt.image.layer_blob import Layer

        out: list = []
        try:
            for i, d in enumerate(layers_desc):
                fd = blobs.copy(d, f"layer {i + 1} of {len(layers_desc)}")
                out.append((fd, Layer(path=f"/proc/self/fd/{fd}", media_type=str(d.get("mediaType") or ""),
                                      digest=d["digest"])))
        except BaseException:
            for fd, _ in out:
                os.close(fd)
            raise
        return out

    return _deferred(ref_text, config, copies, options)


# --- blobs of the store, checked into memory ------------------------------------------------------

class _Blobs:
    """Blobs of one repository: fetched into the store when missing, then copied out and checked."""

    def __init__(self, client, repository: str, store, options: PullOptions) -> None:
        self.client, self.repository, self.store, self.options = client, repository, store, options

    def copy(self, desc: dict, what: str) -> int:
        """A sealed memory file with the blob ``desc`` names, its digest and size checked on the copy."""
        _check_descriptor(desc, self.repository)
        digest, size = desc["digest"], desc["size"]
        label = f"{self.repository}: {what} ({digest})"
        fetch_blobs(self.client, self.repository, [desc], self.store, self.options)
        try:
            with self.store.lock(self.store.lock_name(digest), shared=True):  # not removed by a `cache clean`
                return verified_copy(self.store.blob_path(digest), digest, size, what=label)
        except DigestMismatch:
            pass
        # Not the blob the manifest names: the cache was damaged (or tampered with).  Repair it.
        with self.store.lock(self.store.lock_name(digest)):
            try:
                os.unlink(self.store.blob_path(digest))
            except FileNotFoundError:
                pass
            except IsADirectoryError:
                import shutil

                shutil.rmtree(self.store.blob_path(digest))
            except OSError as e:
                raise ImageError(f"{label}: the cached copy is damaged and cannot be removed: {e.strerror}",
                                 f"remove {self.store.blob_path(digest)}")
        fetch_blobs(self.client, self.repository, [desc], self.store, self.options)
        with self.store.lock(self.store.lock_name(digest), shared=True):
            return verified_copy(self.store.blob_path(digest), digest, size, what=label)


def _check_descriptor(desc: object, where: str) -> None:
    if not isinstance(desc, dict) or not isinstance(desc.get("digest"), str):
        raise ImageError(f"{where}: a manifest descriptor lacks its digest")
    size = desc.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImageError(f"{where}: a manifest descriptor lacks its size")
    from yurt.registry.reference import validate_digest

    validate_digest(desc["digest"])


def _config(blobs: _Blobs, desc: dict, where: str) -> dict:
    _check_descriptor(desc, where)
    if desc["size"] > MAX_CONFIG_BYTES:
        raise ImageError(f"{where}: the image config is too large ({desc.get('size')} bytes)")
    fd = blobs.copy(desc, "the image config")
    try:
        raw = os.pread(fd, desc["size"], 0)
    finally:
        os.close(fd)
    return metadata.parse_object(raw, f"the config of {where}")


# --- local sources -------------------------------------------------------------------------------

def _local(ref_text: str, options: PullOptions) -> Image:
    from yurt.image import oci_local
    from yurt.image.layer_blob import Layer

    held: list = []
    try:
        with oci_local.open_local(ref_text, platform=options.platform()) as image:
            for i, layer in enumerate(image.layers):
                size = layer.size if layer.size is not None else os.stat(layer.path).st_size
                what = f"{ref_text}: layer {i + 1} of {len(image.layers)} ({layer.digest})"
                try:
                    fd = verified_copy(layer.path, layer.digest, size, offset=layer.offset, what=what)
                except DigestMismatch as e:
                    raise ImageError(f"{e.message}: the source changed while it was read", "try again")
                held.append((fd, Layer(path=f"/proc/self/fd/{fd}", media_type=layer.media_type,
                                       digest=layer.digest)))
            config = image.config
    except BaseException:
        for fd, _ in held:
            os.close(fd)
        raise

    def copies() -> list:
        return held

    return _deferred(ref_text, config, copies, options)


# --- the conversion ------------------------------------------------------------------------------

def _deferred(ref_text: str, config: dict, copies, options: PullOptions) -> Image:
    """An Image of ``ref_text`` whose squashfs is made in memory by ``produce``, when it is about to run.

    ``copies()`` gives ``[(fd, Layer)]``, the layers' checked memory copies (closed here after use).
    """
    from yurt.image.pack import OCI_CONFIG, _json

    if not isinstance(config, dict):
        raise ImageError(f"{ref_text}: the image configuration is not a JSON object")
    objects = {OCI_CONFIG: _json(metadata.oci_config({"config": config.get("config")}, "the image configuration"))}

    def produce(image: Image) -> None:
        from yurt.image.rootfs import notice
        from yurt.image.tar2sqfs import tar_to_squashfs_fd

        notice(f"converting {ref_text} in memory for this run (under the site policy the image cache is not "
               "trusted)")
        held = copies()
        out = memfd("squashfs")
        try:
            tar_to_squashfs_fd([layer for _, layer in held], out, compression=options.compression)
            seal(out)
        except BaseException:
            os.close(out)
            raise
        finally:
            for fd, _ in held:
                os.close(fd)
            held.clear()
        image.fd, image.offset, image.size, image.produce = out, 0, os.fstat(out).st_size, None

    return Image(path=ref_text, kind="squashfs", objects=objects, produce=produce)
