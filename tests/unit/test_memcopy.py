"""Private verified memory copies (yurt.store.memcopy), the conversion into a memory file
(yurt.image.tar2sqfs.tar_to_squashfs_fd), and a local OCI source opened privately (yurt.registry.private),
as a site policy runs registry and OCI images."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import threading

import pytest

from yurt.errors import ImageError
from yurt.image.layer_blob import Layer
from yurt.store.memcopy import DigestMismatch, memfd, seal, verified_copy

needs_tar2sqfs = pytest.mark.skipif(shutil.which("tar2sqfs") is None or shutil.which("unsquashfs") is None,
                                    reason="tar2sqfs or unsquashfs not installed")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def blob(tmp_path):
    data = os.urandom((3 << 20) + 12345)  # several copy chunks and a partial one
    path = tmp_path / "blob"
    path.write_bytes(data)
    return path, data


def test_copy_holds_exactly_the_verified_bytes_and_is_sealed(blob):
    path, data = blob
    fd = verified_copy(path, sha256(data), len(data))
    try:
        assert os.fstat(fd).st_size == len(data)
        assert os.pread(fd, len(data) + 1, 0) == data
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0  # ready to be read from the start
        assert os.get_inheritable(fd) is False
        assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:yurt-")  # in no directory
        # sealed: no write, truncate or growth through this descriptor nor a reopened one
        with pytest.raises(PermissionError):
            os.pwrite(fd, b"x", 0)
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 1)
        reopened = os.open(f"/proc/self/fd/{fd}", os.O_RDWR)
        try:
            with pytest.raises(PermissionError):
                os.pwrite(reopened, b"x", 0)
        finally:
            os.close(reopened)
        # the source changing afterwards changes nothing in the copy
        path.write_bytes(b"replaced")
        assert os.pread(fd, len(data), 0) == data
    finally:
        os.close(fd)


def test_a_byte_range_of_a_file_and_sha512(tmp_path):
    data = b"head" + b"the layer" + b"tail"
    path = tmp_path / "archive"
    path.write_bytes(data)
    fd = verified_copy(path, "sha512:" + hashlib.sha512(b"the layer").hexdigest(), 9, offset=4)
    try:
        assert os.pread(fd, 100, 0) == b"the layer"
    finally:
        os.close(fd)


def test_an_open_descriptor_as_source_is_read_not_closed(blob):
    path, data = blob
    src = os.open(path, os.O_RDONLY)
    try:
        fd = verified_copy(src, sha256(data), len(data))
        os.close(fd)
        os.fstat(src)  # still open: the caller's
    finally:
        os.close(src)


def test_empty_blob(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    fd = verified_copy(tmp_path / "empty", sha256(b""), 0)
    try:
        assert os.fstat(fd).st_size == 0
    finally:
        os.close(fd)


@pytest.mark.parametrize("damage", ["other-content", "short", "longer-other-prefix"])
def test_mismatch_is_refused_and_leaves_nothing_open(blob, damage):
    path, data = blob
    digest, size = sha256(data), len(data)
    if damage == "other-content":
        path.write_bytes(bytes(size))  # same size, other bytes
    elif damage == "short":
        path.write_bytes(data[:-1])
    else:  # only the first `size` bytes are read, and they are not the blob
        path.write_bytes(b"y" + data)
    before = open_fds()
    with pytest.raises(DigestMismatch) as err:
        verified_copy(path, digest, size, what="layer 1 of 1")
    assert err.value.message.startswith("layer 1 of 1: ")
    assert open_fds() == before


def test_links_fifos_and_missing_files_are_mismatches_not_hangs(tmp_path, blob):
    path, data = blob
    (tmp_path / "link").symlink_to(path)
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    for name in ("link", "fifo", "dir", "missing"):
        done = threading.Event()
        errors: list[BaseException] = []

        def attempt(name=name, done=done, errors=errors):
            try:
                verified_copy(tmp_path / name, sha256(data), len(data))
            except BaseException as e:  # inspected below
                errors.append(e)
            done.set()

        threading.Thread(target=attempt, daemon=True).start()
        assert done.wait(10), f"{name}: verified_copy blocked"
        assert len(errors) == 1 and isinstance(errors[0], DigestMismatch), (name, errors)


def test_bad_digest_or_size_is_an_image_error_not_a_mismatch(blob):
    path, data = blob
    for digest, size in (("md5:abc", len(data)), ("sha256:", len(data)), (sha256(data), -1), (sha256(data), True)):
        with pytest.raises(ImageError) as err:
            verified_copy(path, digest, size)
        assert not isinstance(err.value, DigestMismatch)


def test_seal_refuses_later_writes():
    fd = memfd("test")
    try:
        os.write(fd, b"abc")
        seal(fd)
        with pytest.raises(PermissionError):
            os.write(fd, b"d")
    finally:
        os.close(fd)


# --- the conversion into a memory file --------------------------------------------------------------------


def tar_of(files: dict[str, bytes]) -> bytes:
    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime = len(data), 1_600_000_000
            tf.addfile(ti, io.BytesIO(data))
    return bio.getvalue()


def listing(fd: int) -> str:
    return subprocess.run(["unsquashfs", "-lc", f"/proc/self/fd/{fd}"], capture_output=True, text=True,
                          pass_fds=(fd,), check=True).stdout


@needs_tar2sqfs
def test_tar_to_squashfs_fd_writes_the_memory_file_in_place(tmp_path):
    from yurt.image.tar2sqfs import tar_to_squashfs_fd

    layer = gzip.compress(tar_of({"etc/marker": b"good\n"}), mtime=0)
    src = verified_copy(_write(tmp_path / "l.gz", layer), sha256(layer), len(layer))
    out = memfd("squashfs")
    try:
        os.write(out, b"stale bytes that tar2sqfs must truncate" * 1000)
        tar_to_squashfs_fd([Layer(path=f"/proc/self/fd/{src}", digest=sha256(layer))], out, processors=1)
        assert os.pread(out, 4, 0) == b"hsqs"
        assert "squashfs-root/etc/marker" in listing(out)
        assert [p.name for p in tmp_path.iterdir()] == ["l.gz"]  # nothing written beside anything
    finally:
        os.close(src)
        os.close(out)


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


# --- a local OCI layout, opened as a policy opens it ---------------------------------------------------


def _layout(root, files: dict[str, bytes]) -> None:
    def blob(data: bytes, media_type: str) -> dict:
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "blobs" / "sha256" / sha256(data)[7:]).write_bytes(data)
        return {"mediaType": media_type, "digest": sha256(data), "size": len(data)}

    raw = tar_of(files)
    layer = blob(gzip.compress(raw, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip")
    config = blob(json.dumps({"architecture": "amd64", "os": "linux", "config": {"Env": ["FROM_CONFIG=1"]},
                              "rootfs": {"type": "layers", "diff_ids": [sha256(raw)]}}).encode(),
                  "application/vnd.oci.image.config.v1+json")
    manifest = blob(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                                "config": config, "layers": [layer]}).encode(),
                    "application/vnd.oci.image.manifest.v1+json")
    manifest["annotations"] = {"org.opencontainers.image.ref.name": "1"}
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest]}))


@needs_tar2sqfs
def test_local_layout_opened_privately_converts_in_memory_when_produced(tmp_path, monkeypatch):
    from yurt.registry.fetch import PullOptions
    from yurt.registry.private import open_private

    monkeypatch.setenv("YURT_QUIET", "1")
    _layout(tmp_path / "layout", {"marker": b"good\n"})
    ref = f"oci:{tmp_path}/layout:1"
    image = open_private(ref, PullOptions())
    # planned from the verified config, nothing converted yet
    assert image.path == ref and image.kind == "squashfs" and image.fd is None and image.produce is not None
    assert image.oci_config() == {"Env": ["FROM_CONFIG=1"]}
    # the source may change now: its layer was copied and checked when it was opened
    for blob in (tmp_path / "layout" / "blobs" / "sha256").iterdir():
        blob.write_bytes(b"x" * blob.stat().st_size)
    image.produce(image)
    try:
        assert image.produce is None and image.offset == 0 and image.size == os.fstat(image.fd).st_size > 0
        assert "squashfs-root/marker" in listing(image.fd)
        with pytest.raises(PermissionError):
            os.pwrite(image.fd, b"x", 0)  # sealed
        assert os.readlink(f"/proc/self/fd/{image.fd}").startswith("/memfd:")
    finally:
        os.close(image.fd)


def test_local_layout_with_a_bad_layer_is_refused_at_open(tmp_path):
    from yurt.registry.fetch import PullOptions
    from yurt.registry.private import open_private

    _layout(tmp_path / "layout", {"marker": b"good\n"})
    for blob in (tmp_path / "layout" / "blobs" / "sha256").iterdir():
        if blob.read_bytes()[:2] == b"\x1f\x8b":
            blob.write_bytes(b"\x1f\x8b" + bytes(blob.stat().st_size - 2))
    before = open_fds()
    with pytest.raises(ImageError, match="does not match its digest"):
        open_private(f"oci:{tmp_path}/layout:1", PullOptions())
    assert open_fds() == before


@pytest.mark.parametrize("desc", [None, [], {}, {"digest": 5, "size": 1}, {"digest": "sha256:" + "0" * 64},
                                  {"digest": "sha256:" + "0" * 64, "size": "1"},
                                  {"digest": "sha256:" + "0" * 64, "size": True},
                                  {"digest": "sha256:" + "0" * 64, "size": -1},
                                  {"digest": "sha256:abc", "size": 1}, {"digest": "../../x", "size": 1}])
def test_hostile_manifest_descriptors_are_one_line_errors(desc):
    from yurt.errors import YurtError
    from yurt.registry.private import _check_descriptor

    with pytest.raises(YurtError):
        _check_descriptor(desc, "registry.example.org/x")


def test_pull_options_name_the_platform_local_sources_pick():
    from yurt.registry.fetch import PullOptions

    assert PullOptions().platform() is None  # the host's
    assert PullOptions(arch="arm64").platform() == "linux/arm64"
    assert PullOptions(arch="arm", variant="v7").platform() == "linux/arm/v7"
    assert PullOptions(variant="v7").platform() is None  # a variant alone picks nothing
