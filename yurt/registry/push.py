"""``yurt push``: a SIF as an ORAS artifact, or a SIF/directory as a real OCI image.

* ``oras://HOST/REPO:TAG`` stores the SIF file itself as the one layer of an
  OCI artifact, with the media types ``apptainer push oras://`` uses, so
  Apptainer can pull what yurt pushes and the other way round.
* ``docker://HOST/REPO:TAG`` makes an ordinary single-layer OCI image (a
  tar+gzip layer, a config carrying Env/Entrypoint/Cmd/WorkingDir from the
  SIF's ``oci-config.json``, an OCI manifest) that podman, skopeo and docker
  pull.  Blobs the registry already has are skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
import tempfile
import zlib
from pathlib import Path

from yurt.errors import ImageError, UsageError

SIF_CONFIG_TYPE = "application/vnd.sylabs.sif.config.v1+json"
SIF_LAYER_TYPE = "application/vnd.sylabs.sif.layer.v1.sif"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _upload(client, repository: str, digest: str, path: Path, size: int, counts: dict[str, int]) -> None:
    """Upload a blob unless the registry has it; ``counts`` tallies present/mounted/uploaded.

    Where yurt has pushed (or pulled) this blob to another repository of the
    same registry, a cross-repository mount is tried first: no bytes move.
    """
    from yurt.store.cache import Store

    if client.blob_exists(repository, digest):
        counts["present"] += 1
        return
    store = Store()
    key = f"blob@{client.registry}/{digest}"
    seen = store.get_ref(key)
    source = seen.get("repository") if seen else None
    how = client.upload_blob(repository, digest, path, size,
                             mount_from=source if source and source != repository else None)
    store.set_ref(key, digest, {"repository": repository})
    counts["mounted" if how == "mounted" else "uploaded"] += 1


def push(image: str, ref_text: str, *, insecure: bool = False, ca_file: str | None = None,
         layer_compression: str = "gzip") -> tuple[str, dict]:
    """Push ``image`` (a SIF or a directory) to ``ref_text``.

    Returns the manifest digest and how many blobs were uploaded, mounted from
    another repository, or already present.
    """
    from yurt.registry.fetch import PullOptions, client_for
    from yurt.registry.reference import parse_reference

    ref = parse_reference(ref_text)
    client = client_for(ref, PullOptions(insecure=insecure, ca_file=ca_file))
    counts = {"uploaded": 0, "mounted": 0, "present": 0}
    if ref.transport == "oras":
        if not os.path.isfile(image):
            raise UsageError("oras:// pushes a SIF file", "use docker:// to push a directory as an OCI image")
        return _push_oras(client, ref, Path(image), counts), counts
    return _push_oci(client, ref, Path(image), counts, layer_compression), counts


def _push_oras(client, ref, sif: Path, counts: dict[str, int]) -> str:
    from yurt.image.sif import is_sif

    if not is_sif(str(sif)):
        raise ImageError(f"{sif} is not a SIF file")
    config = b"{}"
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    with tempfile.TemporaryDirectory(prefix="yurt-push-") as tmp:
        cfg_path = Path(tmp) / "config"
        cfg_path.write_bytes(config)
        _upload(client, ref.repository, config_digest, cfg_path, len(config), counts)
        digest, size = _sha256_file(sif), sif.stat().st_size
        _upload(client, ref.repository, digest, sif, size, counts)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": SIF_CONFIG_TYPE, "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": SIF_LAYER_TYPE, "digest": digest, "size": size,
                    "annotations": {"org.opencontainers.image.title": sif.name}}],
    }
    data = json.dumps(manifest, separators=(",", ":")).encode()
    return client.put_manifest(ref.repository, ref.ref, data, OCI_MANIFEST)


class _DigestingWriter:
    """Compresses the layer tar into a file while hashing the tar (diff_id) and the blob.

    gzip is done with zlib; zstd (Python 3.11 has no zstd module) by piping
    through the ``zstd`` tool, whose output a thread hashes and writes.
    """

    def __init__(self, path: Path, compression: str = "gzip") -> None:
        self.file = open(path, "wb")
        self.raw = hashlib.sha256()
        self.blob = hashlib.sha256()
        self.size = 0
        self.compression = compression
        self.gz = None
        self.proc: subprocess.Popen | None = None
        if compression == "gzip":
            self.gz = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: gzip container
        elif compression == "zstd":
            from yurt.programs import helper_env, require

            zstd = require("zstd", "install zstd or push with --layer-compression gzip", ImageError)
            self.proc = subprocess.Popen([zstd, "-q", "-c", "-3", "-T0"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, env=helper_env())
            import threading

            self.reader = threading.Thread(target=self._drain, daemon=True)
            self.reader.start()
        else:
            raise UsageError(f"unknown layer compression {compression!r}", "use gzip or zstd")

    @property
    def media_type(self) -> str:
        return OCI_LAYER_GZIP if self.compression == "gzip" else OCI_LAYER_ZSTD

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for chunk in iter(lambda: self.proc.stdout.read(1 << 20), b""):  # type: ignore[union-attr]
            self._out(chunk)

    def write(self, data: bytes) -> int:
        self.raw.update(data)
        if self.gz is not None:
            self._out(self.gz.compress(data))
        else:
            assert self.proc is not None and self.proc.stdin is not None
            self.proc.stdin.write(data)
        return len(data)

    def _out(self, data: bytes) -> None:
        if data:
            self.blob.update(data)
            self.file.write(data)
            self.size += len(data)

    def close(self) -> None:
        if self.gz is not None:
            self._out(self.gz.flush())
        elif self.proc is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.reader.join()
            if self.proc.wait() != 0:
                raise ImageError("zstd failed while compressing the layer")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()


def _layer_from_dir(root: Path, out: _DigestingWriter) -> None:
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[arg-type]
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(dirnames) + sorted(filenames):
                full = os.path.join(dirpath, name)
                arc = os.path.relpath(full, root)
                info = tar.gettarinfo(full, arcname=arc)
                if info.isreg():
                    with open(full, "rb") as f:
                        tar.addfile(info, f)
                elif info.isdir() or info.issym() or info.islnk() or info.isfifo():
                    tar.addfile(info)
                # sockets and device nodes of a live tree are left out


def _layer_from_sif(sif_path: Path, out: _DigestingWriter, tmp: Path) -> None:
    """Stream the SIF's squashfs out as a tar with ``sqfs2tar`` (ownership and modes kept)."""
    from yurt.image.source import open_image

    image = open_image(str(sif_path))
    from yurt.programs import helper_env, require

    sqfs2tar = require("sqfs2tar", "install squashfs-tools-ng", ImageError)
    part = tmp / "rootfs.sqfs"
    with open(sif_path, "rb") as src, open(part, "wb") as dst:
        src.seek(image.offset)
        remaining = image.size
        while remaining > 0:
            chunk = src.read(min(remaining, 1 << 20))
            if not chunk:
                raise ImageError(f"{sif_path} is truncated")
            dst.write(chunk)
            remaining -= len(chunk)
    proc = subprocess.Popen([sqfs2tar, "--no-xattr", str(part)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=helper_env())
    assert proc.stdout is not None
    for chunk in iter(lambda: proc.stdout.read(1 << 20), b""):  # type: ignore[union-attr]
        out.write(chunk)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.wait() != 0:
        raise ImageError(f"sqfs2tar failed on {sif_path}: {err.strip().splitlines()[-1:] or ''}")


def _push_oci(client, ref, image: Path, counts: dict[str, int], compression: str = "gzip") -> str:
    from yurt.image.source import open_image

    config_section: dict = {}
    if image.is_dir():
        source = "dir"
    else:
        opened = open_image(str(image))
        if opened.kind not in ("sif", "squashfs"):
            raise ImageError(f"{image} is not a SIF, squashfs or directory image")
        source = "sif"
        config_section = opened.oci_config() or {}
    arch = GO_ARCH.get(os.uname().machine, os.uname().machine)
    with tempfile.TemporaryDirectory(prefix="yurt-push-") as tmp_name:
        tmp = Path(tmp_name)
        layer_path = tmp / "layer"
        writer = _DigestingWriter(layer_path, compression)
        try:
            if source == "dir":
                _layer_from_dir(image, writer)
            else:
                _layer_from_sif(image, writer, tmp)
        finally:
            writer.close()
        layer_digest = "sha256:" + writer.blob.hexdigest()
        diff_id = "sha256:" + writer.raw.hexdigest()
        config = {
            "architecture": arch,
            "os": "linux",
            "config": config_section,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": f"yurt push {image.name}"}],
        }
        epoch = os.environ.get("SOURCE_DATE_EPOCH")
        if epoch and epoch.isdigit():
            import datetime

            config["created"] = datetime.datetime.fromtimestamp(int(epoch), datetime.UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ")
        cfg_bytes = json.dumps(config, separators=(",", ":"), sort_keys=True).encode()
        cfg_path = tmp / "config.json"
        cfg_path.write_bytes(cfg_bytes)
        cfg_digest = "sha256:" + hashlib.sha256(cfg_bytes).hexdigest()
        _upload(client, ref.repository, cfg_digest, cfg_path, len(cfg_bytes), counts)
        _upload(client, ref.repository, layer_digest, layer_path, writer.size, counts)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": cfg_digest, "size": len(cfg_bytes)},
        "layers": [{"mediaType": writer.media_type, "digest": layer_digest, "size": writer.size}],
    }
    data = json.dumps(manifest, separators=(",", ":")).encode()
    return client.put_manifest(ref.repository, ref.ref, data, OCI_MANIFEST)
