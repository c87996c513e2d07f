"""What every command that reads from a registry shares: its options, its client, the manifest, blobs.

``yurt pull`` (:mod:`yurt.registry.pull`, which keeps what it fetches in the cache), ``yurt exec
docker://`` under a site policy (:mod:`yurt.registry.private`, which trusts nothing in the cache),
``yurt push`` and the builds' ``docker``/``oras`` bootstraps all come through here: the site's
``allowed_registries`` is checked by :func:`client_for` before any traffic, and a tag is resolved at
the registry on every call (:func:`resolve_manifest`).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from yurt.errors import ImageError
from yurt.image import metadata
from yurt.record import Record

INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
SIF_LAYER_TYPES = ("application/vnd.sylabs.sif.layer.v1.sif", "application/vnd.sylabs.sif.layer.v1+sif")
PARALLEL_DOWNLOADS = 4


class PullOptions(Record):
    __slots__ = ("arch", "variant", "insecure", "ca_file", "compression", "force", "quiet", "progress")
    _defaults = {"arch": None, "variant": None, "insecure": False, "ca_file": None, "compression": "zstd",
                 "force": False, "quiet": False, "progress": None}
    arch: str | None
    variant: str | None
    insecure: bool
    ca_file: str | None
    compression: str
    force: bool
    quiet: bool
    progress: object

    def platform(self) -> str | None:
        """``linux/ARCH[/VARIANT]`` to pick from a local OCI index, or None (the host's)."""
        if not self.arch:
            return None
        return f"linux/{self.arch}" + (f"/{self.variant}" if self.variant else "")


def client_for(ref, options: PullOptions):
    """A client for ``ref``'s registry, once the site's ``allowed_registries`` admits it."""
    from yurt.registry import auth
    from yurt.registry.client import RegistryClient
    from yurt.registry.policy import check_reference

    check_reference(ref)
    registry = ref.registry
    insecure = options.insecure or auth.is_insecure(registry)
    return RegistryClient(registry, insecure=insecure, ca_file=options.ca_file,
                          credentials=auth.credentials_for(registry))


def resolve_manifest(ref_text: str, options: PullOptions, store):
    """``(ref, client, manifest, digest)``: the image manifest as the registry says it is now (a tag is
    resolved on every call: the registry, not the cache, maps tags to digests), for this platform."""
    from yurt.registry.platforms import resolve_platform
    from yurt.registry.reference import parse_reference

    ref = parse_reference(ref_text)
    client = client_for(ref, options)
    body, media_type, digest = client.get_manifest(ref.repository, ref.ref)
    doc = metadata.parse_object(body, f"the manifest of {ref}")
    if media_type in INDEX_TYPES or doc.get("manifests") is not None:
        desc = resolve_platform(doc, arch=options.arch, variant=options.variant)
        body, media_type, digest = client.get_manifest(ref.repository, desc["digest"])
        doc = metadata.parse_object(body, f"the manifest of {ref}")
    store.set_ref(str(ref), digest, {"media_type": media_type})
    return ref, client, doc, digest


def fetch_blobs(client, repository: str, descriptors: list[dict], store, options: PullOptions) -> int:
    """Download missing blobs in parallel into the store; return the bytes downloaded."""
    missing = []
    for d in descriptors:
        if "digest" not in d or "size" not in d:
            raise ImageError(f"{repository}: a manifest descriptor lacks digest or size")
        if not store.has_blob(d["digest"], d["size"]):
            missing.append(d)
    if not missing:
        return 0
    progress = options.progress

    def fetch(d: dict) -> int:
        def report(done: int, total: int) -> None:
            if progress is not None:
                progress.update(d["digest"], done, total)

        if progress is not None:
            progress.start(d["digest"], d["size"])
        with store.lock(store.lock_name(d["digest"])):
            if not store.has_blob(d["digest"], d["size"]):
                client.fetch_blob(repository, d["digest"], d["size"], store.blob_path(d["digest"]), report)
        # remembered so that `yurt push` to another repository here can mount it instead of uploading
        store.set_ref(f"blob@{client.registry}/{d['digest']}", d["digest"], {"repository": repository})
        if progress is not None:
            progress.finish(d["digest"])
        return int(d["size"])

    with ThreadPoolExecutor(max_workers=min(PARALLEL_DOWNLOADS, len(missing))) as pool:
        return sum(pool.map(fetch, missing))
