"""Reading local OCI sources: image layouts, oci-archive and docker-archive (yurt.image.oci_local and the readers
under it: oci_layout, docker_archive, oci_blobs)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile

import pytest

from yurt.errors import ImageError
from yurt.image import oci_layout as O
from yurt.image.docker_archive import read_docker_archive
from yurt.image.layer_blob import Layer
from yurt.image.layers import write_merged_tar
from yurt.image.oci_layout import LocalImage, read_oci_archive, read_oci_layout
from yurt.image.oci_local import open_local, parse_source

needs_tar2sqfs = pytest.mark.skipif(shutil.which("tar2sqfs") is None or shutil.which("unsquashfs") is None,
                                    reason="tar2sqfs or unsquashfs not installed")
HOST_OS, HOST_ARCH, HOST_VARIANT = O.host_platform()
OTHER_ARCH = "s390x" if HOST_ARCH != "s390x" else "amd64"


def tar_of(files: dict[str, bytes]) -> bytes:
    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mtime = 1_600_000_000
            tf.addfile(ti, io.BytesIO(data))
    return bio.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def contents(layers: list[Layer]) -> dict[str, bytes]:
    out = io.BytesIO()
    write_merged_tar(layers, out)
    out.seek(0)
    with tarfile.open(fileobj=out) as tf:
        return {ti.name: tf.extractfile(ti).read() for ti in tf if ti.isreg()}


class Layout:
    """An OCI image layout written by hand."""

    def __init__(self, root):
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True)
        (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        self.index: list[dict] = []

    def blob(self, data: bytes, media_type: str) -> dict:
        digest = sha(data)
        (self.root / "blobs" / "sha256" / digest[7:]).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def image(self, files_per_layer: list[dict[str, bytes]], arch: str = HOST_ARCH, env=("A=1",)) -> dict:
        layer_descs, diff_ids = [], []
        for files in files_per_layer:
            raw = tar_of(files)
            diff_ids.append(sha(raw))
            layer_descs.append(self.blob(gzip.compress(raw, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip"))
        config = {"architecture": arch, "os": "linux", "config": {"Env": list(env), "Cmd": ["/bin/sh"]},
                  "rootfs": {"type": "layers", "diff_ids": diff_ids}}
        config_desc = self.blob(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json")
        manifest = {"schemaVersion": 2, "mediaType": O.MEDIA_OCI_MANIFEST, "config": config_desc,
                    "layers": layer_descs}
        return self.blob(json.dumps(manifest).encode(), O.MEDIA_OCI_MANIFEST)

    def multi(self, manifests: list[tuple[dict, str]]) -> dict:
        entries = []
        for desc, arch in manifests:
            entries.append({**desc, "platform": {"os": "linux", "architecture": arch}})
        attestation = self.blob(b"{}", O.MEDIA_OCI_MANIFEST)
        entries.insert(0, {**attestation, "platform": {"os": "unknown", "architecture": "unknown"},
                           "annotations": {"vnd.docker.reference.type": "attestation-manifest"}})
        index = {"schemaVersion": 2, "mediaType": O.MEDIA_OCI_INDEX, "manifests": entries}
        return self.blob(json.dumps(index).encode(), O.MEDIA_OCI_INDEX)

    def tag(self, desc: dict, name: str | None) -> None:
        entry = dict(desc)
        if name is not None:
            entry["annotations"] = {O.REF_NAME: name}
        self.index.append(entry)
        (self.root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": self.index}))

    def path(self, desc: dict):
        return self.root / "blobs" / "sha256" / desc["digest"][7:]


@pytest.fixture
def layout(tmp_path):
    return Layout(tmp_path / "layout")


# --- oci: ----------------------------------------------------------------------------------------


def test_layout_single_image(layout):
    manifest = layout.image([{"etc/a": b"one"}, {"etc/b": b"two"}])
    layout.tag(manifest, "v1")
    image = read_oci_layout(layout.root)
    assert image.manifest_digest == manifest["digest"]
    assert image.config["config"]["Env"] == ["A=1"]
    assert len(image.layers) == 2 and all(lay.digest.startswith("sha256:") for lay in image.layers)
    assert contents(image.layers) == {"etc/a": b"one", "etc/b": b"two"}
    assert read_oci_layout(layout.root, "v1").manifest_digest == manifest["digest"]


def test_layout_tags(layout):
    first = layout.image([{"a": b"1"}], env=("V=1",))
    second = layout.image([{"a": b"2"}], env=("V=2",))
    layout.tag(first, "one")
    layout.tag(second, "two")
    assert read_oci_layout(layout.root, "two").config["config"]["Env"] == ["V=2"]
    with pytest.raises(ImageError, match="name one with :TAG") as info:
        read_oci_layout(layout.root)
    assert "one, two" in str(info.value)
    with pytest.raises(ImageError, match="no image tagged 'three'"):
        read_oci_layout(layout.root, "three")


def test_layout_nested_index_picks_the_host_platform(layout):
    host = layout.image([{"arch": HOST_ARCH.encode()}], arch=HOST_ARCH)
    other = layout.image([{"arch": OTHER_ARCH.encode()}], arch=OTHER_ARCH)
    index = layout.multi([(other, OTHER_ARCH), (host, HOST_ARCH)])
    layout.tag(index, "latest")
    image = read_oci_layout(layout.root, "latest")
    assert image.manifest_digest == host["digest"]
    assert contents(image.layers) == {"arch": HOST_ARCH.encode()}
    assert read_oci_layout(layout.root, platform=f"linux/{OTHER_ARCH}").manifest_digest == other["digest"]
    with pytest.raises(ImageError, match="no image for linux/riscv64") as info:
        read_oci_layout(layout.root, platform="linux/riscv64")
    assert f"linux/{HOST_ARCH}" in str(info.value)
    with pytest.raises(ImageError, match="invalid platform"):
        read_oci_layout(layout.root, platform="linux")


def test_layout_blob_tampering_is_detected(layout):
    manifest = layout.image([{"a": b"1"}, {"b": b"2"}])
    layout.tag(manifest, None)
    layer_desc = json.loads(layout.path(manifest).read_bytes())["layers"][1]
    blob = layout.path(layer_desc)
    original = blob.read_bytes()
    blob.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # same size, other content
    with pytest.raises(ImageError, match="does not match its digest"):
        read_oci_layout(layout.root)
    blob.write_bytes(original + b"x")
    with pytest.raises(ImageError, match="its descriptor says"):
        read_oci_layout(layout.root)
    blob.unlink()
    with pytest.raises(ImageError, match="is missing"):
        read_oci_layout(layout.root)


def test_layout_config_and_manifest_are_verified(layout):
    manifest = layout.image([{"a": b"1"}])
    layout.tag(manifest, None)
    config_desc = json.loads(layout.path(manifest).read_bytes())["config"]
    layout.path(config_desc).write_bytes(layout.path(config_desc).read_bytes().replace(b"A=1", b"A=2"))
    with pytest.raises(ImageError, match="image config .* does not match its digest"):
        read_oci_layout(layout.root)
    layout.path(manifest).write_bytes(b"{}" + b" " * (manifest["size"] - 2))
    with pytest.raises(ImageError, match="manifest .* does not match its digest"):
        read_oci_layout(layout.root)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(digest="sha256:../../../etc/passwd"), "invalid digest"),
    (lambda d: d.update(digest="md5:" + "0" * 32), "invalid digest"),
    (lambda d: d.update(size=-1), "invalid size"),
])
def test_layout_hostile_descriptors(layout, mutate, message):
    manifest = layout.image([{"a": b"1"}])
    mutate(manifest)
    layout.tag(manifest, None)
    with pytest.raises(ImageError, match=message):
        read_oci_layout(layout.root)


def test_layout_rejects_other_things(layout, tmp_path):
    with pytest.raises(ImageError, match="not an OCI image layout directory"):
        read_oci_layout(tmp_path / "nowhere")
    manifest = layout.image([{"a": b"1"}], arch=HOST_ARCH)
    layout.tag(manifest, None)
    (layout.root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "2.0.0"}))
    with pytest.raises(ImageError, match="unsupported OCI image layout version"):
        read_oci_layout(layout.root)
    (layout.root / "oci-layout").write_text("[]")
    with pytest.raises(ImageError, match="not a JSON object"):
        read_oci_layout(layout.root)


def test_windows_images_are_refused(layout):
    manifest = layout.image([{"a": b"1"}])
    config_desc = json.loads(layout.path(manifest).read_bytes())["config"]
    config = json.loads(layout.path(config_desc).read_bytes())
    config["os"] = "windows"
    new_config = layout.blob(json.dumps(config).encode(), config_desc["mediaType"])
    doc = json.loads(layout.path(manifest).read_bytes())
    doc["config"] = new_config
    layout.tag(layout.blob(json.dumps(doc).encode(), O.MEDIA_OCI_MANIFEST), None)
    with pytest.raises(ImageError, match="is for 'windows'"):
        read_oci_layout(layout.root)


# --- oci-archive: ------------------------------------------------------------------------------


def tar_dir(root, out, compress=False) -> None:
    with tarfile.open(out, "w:gz" if compress else "w") as tf:
        for name in sorted(os.listdir(root)):
            tf.add(root / name, arcname=name)


def test_oci_archive_reads_layers_in_place(layout, tmp_path):
    manifest = layout.image([{"a": b"1"}, {"b": b"2"}])
    layout.tag(manifest, "v1")
    archive = tmp_path / "image.tar"
    tar_dir(layout.root, archive)
    image = read_oci_archive(archive, "v1")
    assert image.workdir is None
    assert all(os.path.samefile(lay.path, archive) and lay.offset > 0 for lay in image.layers)
    assert contents(image.layers) == {"a": b"1", "b": b"2"}
    assert image.manifest_digest == manifest["digest"]


def test_compressed_oci_archive(layout, tmp_path):
    manifest = layout.image([{"a": b"1"}])
    layout.tag(manifest, None)
    archive = tmp_path / "image.tar.gz"
    tar_dir(layout.root, archive, compress=True)
    with read_oci_archive(archive, tmpdir=str(tmp_path)) as image:
        workdir = image.workdir
        assert workdir is not None and os.path.isdir(workdir)
        assert contents(image.layers) == {"a": b"1"}
    assert not os.path.exists(workdir)


def test_oci_archive_tampering_and_escapes(layout, tmp_path):
    manifest = layout.image([{"a": b"1"}])
    layout.tag(manifest, None)
    layer_desc = json.loads(layout.path(manifest).read_bytes())["layers"][0]
    good = layout.path(layer_desc).read_bytes()
    layout.path(layer_desc).write_bytes(bytes(len(good)))
    archive = tmp_path / "bad.tar"
    tar_dir(layout.root, archive)
    with tarfile.open(archive, "a") as tf:  # members that try to leave the archive are ignored
        ti = tarfile.TarInfo("../../outside")
        tf.addfile(ti)
    with pytest.raises(ImageError, match="does not match its digest"):
        read_oci_archive(archive)
    assert not (tmp_path.parent / "outside").exists()


def test_oci_archive_with_symlinked_blob(layout, tmp_path):
    manifest = layout.image([{"a": b"1"}])
    layout.tag(manifest, None)
    layer_desc = json.loads(layout.path(manifest).read_bytes())["layers"][0]
    blob = layout.path(layer_desc)
    (layout.root / "store").mkdir()
    blob.rename(layout.root / "store" / "layer")
    os.symlink("../../store/layer", blob)
    archive = tmp_path / "linked.tar"
    tar_dir(layout.root, archive)
    assert contents(read_oci_archive(archive).layers) == {"a": b"1"}


# --- docker-archive: ------------------------------------------------------------------------


def docker_save(tmp_path, layers: list[bytes], compressed_layer=False, tags=("busybox:latest",), extra=None):
    """A legacy `docker save` archive: <id>/layer.tar, <config digest>.json, manifest.json."""
    diff_ids = [sha(raw) for raw in layers]
    config = {"architecture": HOST_ARCH, "os": "linux", "config": {"Cmd": ["sh"]},
              "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    config_raw = json.dumps(config).encode()
    members = {f"{sha(config_raw)[7:]}.json": config_raw}
    names = []
    for i, raw in enumerate(layers):
        name = f"{i:064x}/layer.tar"
        members[name] = gzip.compress(raw) if compressed_layer else raw
        names.append(name)
    manifest = [{"Config": f"{sha(config_raw)[7:]}.json", "RepoTags": list(tags), "Layers": names}]
    manifest += extra or []
    members["manifest.json"] = json.dumps(manifest).encode()
    archive = tmp_path / "saved.tar"
    with tarfile.open(archive, "w") as tf:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return archive, sha(config_raw)


def test_docker_archive(tmp_path):
    archive, config_digest = docker_save(tmp_path, [tar_of({"bin/sh": b"sh"}), tar_of({"etc/x": b"x"})])
    image = read_docker_archive(archive)
    assert image.manifest_digest == config_digest
    assert contents(image.layers) == {"bin/sh": b"sh", "etc/x": b"x"}
    for ref in ("busybox:latest", "busybox", "docker.io/library/busybox:latest", "@0"):
        assert read_docker_archive(archive, ref).manifest_digest == config_digest
    with pytest.raises(ImageError, match="no image tagged 'alpine'"):
        read_docker_archive(archive, "alpine")
    with pytest.raises(ImageError, match="no image @3"):
        read_docker_archive(archive, "@3")


def test_docker_archive_compressed_layers_are_checked_against_diff_ids(tmp_path):
    archive, _ = docker_save(tmp_path, [tar_of({"a": b"1"})], compressed_layer=True)
    assert contents(read_docker_archive(archive).layers) == {"a": b"1"}


def test_docker_archive_tampering(tmp_path):
    archive, _ = docker_save(tmp_path, [tar_of({"a": b"original content"})])
    archive.write_bytes(archive.read_bytes().replace(b"original content", b"modified content"))
    with pytest.raises(ImageError, match="does not match its diff_id"):
        read_docker_archive(archive)
    archive, _ = docker_save(tmp_path, [tar_of({"a": b"original content" * 100})], compressed_layer=True)
    data = bytearray(archive.read_bytes())
    pos = data.find(b"\x1f\x8b") + 30  # inside the compressed layer
    data[pos] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="does not match its diff_id|corrupt gzip data|truncated"):
        read_docker_archive(archive)


def test_docker_archive_bad_config_digest(tmp_path):
    archive, config_digest = docker_save(tmp_path, [tar_of({"a": b"1"})])
    data = archive.read_bytes().replace(b'"Cmd": ["sh"]', b'"Cmd": ["xx"]')
    archive.write_bytes(data)
    with pytest.raises(ImageError, match="image config .* does not match its digest"):
        read_docker_archive(archive)


def test_docker_archive_shared_layer_symlink(tmp_path):
    """docker save stores a layer used twice once, with a symlink for the second copy."""
    raw = tar_of({"a": b"1"})
    archive, _ = docker_save(tmp_path, [raw, raw])
    with tarfile.open(archive, "r") as tf:
        members = [(ti, tf.extractfile(ti).read() if ti.isreg() else None) for ti in tf]
    rebuilt = tmp_path / "linked.tar"
    with tarfile.open(rebuilt, "w") as tf:
        for ti, data in members:
            if ti.name == f"{1:064x}/layer.tar":
                link = tarfile.TarInfo(ti.name)
                link.type = tarfile.SYMTYPE
                link.linkname = f"../{0:064x}/layer.tar"
                tf.addfile(link)
            else:
                tf.addfile(ti, io.BytesIO(data))
    assert len(read_docker_archive(rebuilt).layers) == 2


def test_docker_archive_multiple_images_and_escapes(tmp_path):
    extra = [{"Config": "../../etc/passwd", "RepoTags": ["evil:1"], "Layers": ["../../../etc/shadow"]}]
    archive, _ = docker_save(tmp_path, [tar_of({"a": b"1"})], extra=extra)
    with pytest.raises(ImageError, match="holds 2 images"):
        read_docker_archive(archive)
    with pytest.raises(ImageError, match="is missing"):
        read_docker_archive(archive, "evil:1")


def test_not_a_docker_archive(tmp_path, layout):
    manifest = layout.image([{"a": b"1"}])
    layout.tag(manifest, None)
    archive = tmp_path / "oci.tar"
    tar_dir(layout.root, archive)
    with pytest.raises(ImageError, match="manifest.json is missing"):
        read_docker_archive(archive)
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"junk" * 1000)
    with pytest.raises(ImageError):
        read_docker_archive(junk)


# --- source strings -----------------------------------------------------------------------------


def test_parse_source(tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "a:b").mkdir()
    (tmp_path / "img.tar").write_bytes(b"")
    t = str(tmp_path)
    assert parse_source(f"oci:{t}/dir") == ("oci", f"{t}/dir", None)
    assert parse_source(f"oci:{t}/dir:v1.2") == ("oci", f"{t}/dir", "v1.2")
    assert parse_source(f"oci:{t}/a:b") == ("oci", f"{t}/a:b", None)
    assert parse_source(f"oci-archive:{t}/img.tar:latest") == ("oci-archive", f"{t}/img.tar", "latest")
    assert parse_source(f"docker-archive:{t}/img.tar:busybox:1.36") == ("docker-archive", f"{t}/img.tar",
                                                                      "busybox:1.36")
    assert parse_source(f"docker-archive:{t}/img.tar") == ("docker-archive", f"{t}/img.tar", None)
    for bad in ("docker://busybox", "oci:", "/some/path"):
        with pytest.raises(ImageError):
            parse_source(bad)


def test_open_local(tmp_path, layout):
    manifest = layout.image([{"a": b"1"}])
    layout.tag(manifest, "v1")
    image = open_local(f"oci:{layout.root}:v1")
    assert isinstance(image, LocalImage) and image.manifest_digest == manifest["digest"]
    with pytest.raises(ImageError, match="no such file"):
        open_local(f"oci-archive:{tmp_path}/missing.tar")


@needs_tar2sqfs
def test_layout_to_sif(tmp_path, layout):
    from yurt.image.sif import DataType, SifFile
    from yurt.image.tar2sqfs import layers_to_sif

    manifest = layout.image([{"etc/os-release": b"ID=test\n"}, {"bin/tool": b"#!/bin/sh\n"}])
    layout.tag(manifest, "v1")
    with open_local(f"oci:{layout.root}:v1") as image:
        out = tmp_path / "img.sif"
        layers_to_sif(image.layers, out, oci_config=image.config, processors=1)
    with SifFile.open(out) as sif:
        (obj,) = sif.find(DataType.GENERIC_JSON, "oci-config.json")
        assert json.loads(sif.read_object(obj))["Env"] == ["A=1"]
