"""`yurt inspect` / `yurt run-help` on SIF, squashfs and sandbox images."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from yurt.errors import ImageError
from yurt.image.inspect import NO_HELP, format_inspect, inspect_image, run_help
from yurt.image.pack import build_sif
from yurt.image.sif import DataType
from yurt.image.sif_write import SifObject, write_sif
from yurt.image.squashfs import mksquashfs

needs_squashfs = pytest.mark.skipif(
    shutil.which("mksquashfs") is None or shutil.which("unsquashfs") is None,
    reason="squashfs-tools not installed",
)


def make_image_tree(root) -> None:
    meta = root / ".singularity.d"
    (meta / "env").mkdir(parents=True)
    (meta / "labels.json").write_text(json.dumps({"from": "image", "shared": "image"}))
    (meta / "runscript").write_text("#!/bin/sh\nexec echo in-image\n")
    (meta / "runscript.help").write_text("This image says hello.\n")
    (meta / "Singularity").write_text("Bootstrap: docker\nFrom: alpine\n")
    (meta / "env" / "01-base.sh").write_text("export BASE=1\n")
    (meta / "env" / "90-environment.sh").write_text("export FOO=bar\n")
    (meta / "env" / "README").write_text("not a script\n")
    (root / "bin").mkdir()
    (root / "bin" / "sh").write_text("fake\n")


def digest(path) -> str:
    with open(path, "rb") as f:
        return "sha256:" + hashlib.sha256(f.read()).hexdigest()


@needs_squashfs
def test_inspect_sif_reads_layout_and_objects(tmp_path):
    tree = tmp_path / "tree"
    make_image_tree(tree)
    sif = tmp_path / "img.sif"
    build_sif(tree, sif, labels={"shared": "object", "extra": "1"}, deffile=b"Bootstrap: scratch\n",
              env_script=b"export OBJ=1\n")
    info = inspect_image(sif)
    assert info["format"] == "sif" and info["digest"] == digest(sif)
    assert info["labels"] == {"from": "image", "shared": "object", "extra": "1"}
    assert info["runscript"] == "#!/bin/sh\nexec echo in-image\n"
    assert info["deffile"] == "Bootstrap: scratch\n"  # the SIF object wins over the in-image copy
    assert info["helpfile"] == "This image says hello.\n"
    env = info["environment"]
    assert env["/.singularity.d/env/01-base.sh"] == "export BASE=1\n"
    assert env["/.singularity.d/env/90-environment.sh"] == "export FOO=bar\n"
    assert env["sif:EnvVar"] == "export OBJ=1\n" and not any("README" in k for k in env)
    (part,) = info["partitions"]
    assert part["fs"] == "Squashfs" and part["type"] == "*System" and part["size"] > 0
    assert info["header"]["arch"] in ("amd64", "arm64", "ppc64le", "s390x", "riscv64", "386", "arm")
    assert [o["type"] for o in info["objects"]][0] == "Def.FILE"
    assert run_help(sif) == "This image says hello.\n"
    assert info["warnings"] == []


@needs_squashfs
def test_inspect_plain_squashfs(tmp_path):
    tree = tmp_path / "tree"
    make_image_tree(tree)
    mksquashfs(tree, tmp_path / "img.sqfs")
    info = inspect_image(tmp_path / "img.sqfs", digest=False)
    assert info["format"] == "squashfs" and info["labels"]["from"] == "image" and "digest" not in info


def test_inspect_sandbox(tmp_path):
    tree = tmp_path / "sandbox"
    make_image_tree(tree)
    info = inspect_image(tree)
    assert info["format"] == "sandbox" and info["size"] > 0
    assert info["labels"] == {"from": "image", "shared": "image"}
    assert info["runscript"].endswith("in-image\n") and info["deffile"].startswith("Bootstrap: docker")
    assert list(info["environment"]) == ["/.singularity.d/env/01-base.sh", "/.singularity.d/env/90-environment.sh"]
    assert run_help(tree) == "This image says hello.\n"


def test_sandbox_symlinks_to_host_files_are_not_followed(tmp_path):
    secret = tmp_path / "host-secret"
    secret.write_text("TOP SECRET\n")
    tree = tmp_path / "sandbox"
    (tree / ".singularity.d").mkdir(parents=True)
    os.symlink(secret, tree / ".singularity.d" / "runscript")
    os.symlink(tmp_path, tree / ".singularity.d" / "env")
    os.mkfifo(tree / ".singularity.d" / "labels.json")  # must not block
    info = inspect_image(tree)
    assert info["runscript"] is None and info["environment"] == {} and info["labels"] == {}
    assert "TOP SECRET" not in json.dumps(info)
    assert any("/.singularity.d/runscript is a symbolic link" in w for w in info["warnings"])
    assert any("/.singularity.d/env is a symbolic link" in w for w in info["warnings"])
    assert any("/.singularity.d/labels.json is a FIFO" in w for w in info["warnings"])


def test_sandbox_bad_labels_become_warnings(tmp_path):
    tree = tmp_path / "sandbox"
    (tree / ".singularity.d").mkdir(parents=True)
    (tree / ".singularity.d" / "labels.json").write_text("{not json")
    info = inspect_image(tree)
    assert info["labels"] == {} and info["warnings"]
    assert run_help(tree) == NO_HELP


@pytest.mark.parametrize("labels", [b"[1, 2]", b"[" * 100000 + b"]" * 100000, b"\xff\xfe", b'"text"',
                                    b'{"a": ' + b"[" * 100000 + b"]" * 100000 + b"}"])
def test_sandbox_hostile_labels_are_one_warning(tmp_path, labels):
    tree = tmp_path / "sandbox"
    make_image_tree(tree)
    (tree / ".singularity.d" / "labels.json").write_bytes(labels)
    info = inspect_image(tree)
    assert info["labels"] == {} and len(info["warnings"]) == 1
    assert info["warnings"][0].startswith("labels.json: ") and "labels ignored" in info["warnings"][0]
    assert format_inspect(info, json_output=False, sections=set()).count("Warning:") == 1
    assert info["runscript"] == "#!/bin/sh\nexec echo in-image\n"  # the rest is still read


def test_sandbox_oversized_and_special_metadata_are_warnings(tmp_path):
    tree = tmp_path / "sandbox"
    make_image_tree(tree)
    meta = tree / ".singularity.d"
    with open(meta / "runscript.help", "wb") as f:
        f.truncate(100 << 20)
    os.unlink(meta / "Singularity")
    (meta / "Singularity").mkdir()
    os.mkfifo(meta / "env" / "50-fifo.sh")
    info = inspect_image(tree)
    assert info["helpfile"] is None and info["deffile"] is None
    assert set(info["environment"]) == {"/.singularity.d/env/01-base.sh", "/.singularity.d/env/90-environment.sh"}
    assert sorted(w.split(" is ")[0] for w in info["warnings"]) == [
        "/.singularity.d/Singularity", "/.singularity.d/env/50-fifo.sh", "/.singularity.d/runscript.help"]


def test_sif_metadata_attributes_of_the_wrong_type_are_warnings(tmp_path):
    sif = tmp_path / "meta.sif"
    attrs = {"labels": ["a"], "environment": {"x": 1}, "runscript": 5, "deffile": "Bootstrap: x\n",
             "helpfile": {"a": "b"}}
    write_sif(sif, [SifObject(DataType.GENERIC_JSON, json.dumps({"data": {"attributes": attrs}}).encode(),
                              name="inspect-metadata.json")], created_at=0)
    info = inspect_image(sif)
    assert info["labels"] == {} and info["environment"] == {} and info["runscript"] is None
    assert info["helpfile"] is None and info["deffile"] == "Bootstrap: x\n"
    assert len(info["warnings"]) == 4, info["warnings"]
    for text in (format_inspect(info, json_output=False, sections=set()),
                 format_inspect(info, json_output=True, sections={"labels", "runscript", "helpfile"})):
        assert text


def test_sif_without_partition_and_hostile_metadata(tmp_path):
    sif = tmp_path / "meta.sif"
    write_sif(sif, [
        SifObject(DataType.LABELS, b'["not", "a", "dict"]'),
        SifObject(DataType.GENERIC_JSON, b'{"data": 5}', name="inspect-metadata.json"),
        SifObject(DataType.GENERIC, b"help me\n", name="runscript.help"),
        SifObject(DataType.DEFFILE, b"x" * (5 << 20)),
    ], created_at=0)
    info = inspect_image(sif)
    assert info["labels"] == {} and info["partitions"] == [] and info["deffile"] is None
    assert len(info["warnings"]) == 3  # labels shape, metadata shape, oversized deffile
    assert run_help(sif) == "help me\n"


def test_not_an_image(tmp_path):
    (tmp_path / "junk").write_bytes(b"hello world")
    with pytest.raises(ImageError, match="not a SIF"):
        inspect_image(tmp_path / "junk")
    with pytest.raises(ImageError, match="does not exist"):
        inspect_image(tmp_path / "missing")
    truncated = tmp_path / "t.sif"
    truncated.write_bytes(b"#!/usr/bin/env run-singularity\n\0SIF_MAGIC\0" + bytes(50))
    with pytest.raises(ImageError, match="truncated"):
        inspect_image(truncated)


def sample_info() -> dict:
    return {
        "path": "img.sif", "format": "sif", "size": 100, "digest": "sha256:abc",
        "header": {"arch": "amd64", "id": "0000", "created": 0},
        "labels": {"b": "2", "a": "1"}, "environment": {"/e.sh": "export A=1"},
        "runscript": "#!/bin/sh\n", "deffile": "Bootstrap: scratch", "helpfile": None,
        "partitions": [{"id": 3, "fs": "Squashfs", "type": "*System", "arch": "amd64", "size": 9, "offset": 0}],
        "objects": [{"id": 3, "type": "FS", "name": "", "size": 9}], "warnings": [],
    }


def test_format_sections_text():
    info = sample_info()
    assert format_inspect(info, json_output=False, sections={"labels"}) == "a: 1\nb: 2\n"
    assert format_inspect(info, json_output=False, sections={"runscript"}) == "#!/bin/sh\n"
    assert format_inspect(info, json_output=False, sections={"deffile"}) == "Bootstrap: scratch\n"
    assert format_inspect(info, json_output=False, sections={"digest"}) == "sha256:abc\n"
    assert format_inspect(info, json_output=False, sections={"helpfile"}) == ""
    assert "=== /e.sh ===\nexport A=1\n" in format_inspect(info, json_output=False, sections={"environment"})
    assert "Squashfs" in format_inspect(info, json_output=False, sections={"partitions"})
    both = format_inspect(info, json_output=False, sections={"labels", "digest"})
    assert "== labels ==" in both and "== digest ==" in both


def test_format_json_and_summary():
    info = sample_info()
    out = json.loads(format_inspect(info, json_output=True, sections={"labels", "runscript"}))
    assert out == {"data": {"attributes": {"labels": {"a": "1", "b": "2"}, "runscript": "#!/bin/sh\n"}},
                   "type": "container"}
    assert json.loads(format_inspect(info, json_output=True, sections=set())) == info
    text = format_inspect(info, json_output=False, sections=set())
    for needle in ("img.sif", "sha256:abc", "amd64", "Labels:", "a: 1", "Partitions:", "Runscript:", "Objects:"):
        assert needle in text
    with pytest.raises(ImageError, match="unknown inspect section"):
        format_inspect(info, json_output=False, sections={"bogus"})


def test_fifo_image_path_does_not_block(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ImageError, match="not a SIF"):
        inspect_image(tmp_path / "fifo")
