"""The image is opened once (yurt.image.source.open_image): the site's checks run on that descriptor and
only it is used afterwards, so renaming or relinking the path after the open changes nothing."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from yurt import config
from yurt.errors import ImageError, PolicyError
from yurt.image.source import open_image

needs_squashfs = pytest.mark.skipif(not (shutil.which("mksquashfs") and shutil.which("unsquashfs")),
                                    reason="needs squashfs-tools")


def squashfs(tmp_path: Path, name: str, marker: str) -> Path:
    tree = tmp_path / f"{name}-tree"
    tree.mkdir()
    (tree / "marker").write_text(marker)
    out = tmp_path / f"{name}.sqfs"
    subprocess.run(["mksquashfs", str(tree), str(out), "-quiet", "-no-progress", "-noappend"], check=True)
    return out


@pytest.fixture
def policy(tmp_path, monkeypatch):
    """A Config with ``allowed_image_paths = [<tmp>/allowed]``, read from a site file of the test's."""
    monkeypatch.setattr(config, "SITE_CONFIG", str(tmp_path / "etc" / "yurt.toml"))
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    site = tmp_path / "site.toml"
    site.write_text(f'allowed_image_paths = ["{allowed}"]\n')
    cfg = config.load({"HOME": str(tmp_path), "YURT_SITE_CONFIG": str(site)})
    assert cfg.policy
    return cfg, allowed


def test_directory_image_is_opened_as_a_directory(tmp_path):
    (tmp_path / "img").mkdir()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "img")
    image = open_image(str(link))
    assert image.kind == "sandbox" and image.path == str(tmp_path / "img")  # where it really is
    assert image.fd is not None and fcntl.fcntl(image.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    assert os.path.samestat(os.fstat(image.fd), os.stat(tmp_path / "img"))
    assert os.listdir(f"/proc/self/fd/{image.fd}") == []


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_fifos_and_devices_are_refused_without_blocking(tmp_path, kind):
    path = "/dev/null" if kind == "device" else str(tmp_path / "fifo")
    if kind == "fifo":
        os.mkfifo(path)
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(_try_open(path)), daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "open_image blocked"
    assert isinstance(result[0], ImageError) and "neither a file nor a directory" in str(result[0])


def _try_open(path: str) -> object:
    try:
        return open_image(path)
    except ImageError as e:
        return e


def test_check_image_judges_the_open_file_not_the_path(policy, tmp_path):
    """Swap a link between the open and the check, both ways: the descriptor decides."""
    cfg, allowed = policy
    (allowed / "good").mkdir()
    (tmp_path / "elsewhere").mkdir()
    link = tmp_path / "link"

    link.symlink_to(allowed / "good")
    image = open_image(str(link))
    link.unlink()
    link.symlink_to(tmp_path / "elsewhere")
    cfg.check_image(str(link), image.fd)  # what was opened is allowed
    with pytest.raises(PolicyError, match="not in a location the site allows"):
        cfg.check_image(str(link))  # by path it would now be refused

    image = open_image(str(link))  # now the link leads elsewhere
    link.unlink()
    link.symlink_to(allowed / "good")
    with pytest.raises(PolicyError, match="not in a location the site allows"):
        cfg.check_image(str(link), image.fd)
    cfg.check_image(str(link))


def test_owner_rule_uses_fstat(policy, tmp_path, monkeypatch):
    cfg, allowed = policy
    (allowed / "img").mkdir()
    image = open_image(str(allowed / "img"))
    cfg.allowed_image_owners = (os.getuid(),)
    cfg.check_image(str(allowed / "img"), image.fd)
    cfg.allowed_image_owners = (os.getuid() + 1,)
    with pytest.raises(PolicyError, match="owned by"):
        cfg.check_image(str(allowed / "img"), image.fd)


def test_an_image_removed_after_the_open_is_refused(policy):
    cfg, allowed = policy
    (allowed / "img").mkdir()
    image = open_image(str(allowed / "img"))
    (allowed / "img").rmdir()
    with pytest.raises(ImageError, match="removed"):
        cfg.check_image(str(allowed / "img"), image.fd)


@needs_squashfs
def test_unpacking_reads_the_descriptor_even_when_the_path_is_replaced(tmp_path):
    from yurt.image.squashfs import unsquashfs_extract

    good, bad = squashfs(tmp_path, "good", "good\n"), squashfs(tmp_path, "bad", "bad\n")
    image = open_image(str(good))
    assert image.kind == "squashfs"
    os.replace(bad, good)  # the path now names the other image
    unsquashfs_extract(str(good), image.offset, tmp_path / "out", image_fd=image.fd)
    assert (tmp_path / "out" / "marker").read_text() == "good\n"
    unsquashfs_extract(str(good), 0, tmp_path / "by-path")
    assert (tmp_path / "by-path" / "marker").read_text() == "bad\n"  # the path alone would have been fooled


@needs_squashfs
def test_sif_metadata_comes_from_the_descriptor(tmp_path):
    from yurt.image.sif import DataType, FsType, PartType
    from yurt.image.sif_write import SifObject, write_sif

    sqfs = squashfs(tmp_path, "root", "x\n")
    sif = tmp_path / "img.sif"
    write_sif(sif, [SifObject(DataType.PARTITION, str(sqfs), fs_type=FsType.SQUASH, part_type=PartType.PRIM_SYS),
                    SifObject(DataType.GENERIC, b"#!/bin/sh\necho one\n", name="runscript")])
    image = open_image(str(sif))
    assert image.kind == "sif" and image.objects["runscript"].endswith(b"one\n")
    with open(sif, "rb") as f:
        assert os.path.samestat(os.fstat(image.fd), os.fstat(f.fileno()))
    # only the caller's descriptor stays open: the SIF reader's own copy is closed
    before = set(os.listdir("/proc/self/fd"))
    image2 = open_image(str(sif))
    assert set(os.listdir("/proc/self/fd")) - before == {str(image2.fd)}
