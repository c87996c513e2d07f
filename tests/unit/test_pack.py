"""Packing trees into SIF and sandbox images with the real squashfs-tools."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest

from yurt.errors import ImageError
from yurt.image import squashfs as Q
from yurt.image.pack import INSPECT_METADATA, OCI_CONFIG, build_sandbox, build_sif
from yurt.image.sif import DataType, FsType, PartType, SifFile, host_arch_code
from yurt.image.squashfs import default_processors, mksquashfs, unsquashfs_extract

needs_squashfs = pytest.mark.skipif(
    shutil.which("mksquashfs") is None or shutil.which("unsquashfs") is None,
    reason="squashfs-tools not installed",
)
EPOCH = 1_600_000_000


def make_tree(root) -> None:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "hello").write_text("#!/bin/sh\necho hello\n")
    (root / "bin" / "hello").chmod(0o755)
    (root / "etc").mkdir()
    (root / "etc" / "motd").write_text("welcome\n")
    (root / "etc" / "secret").write_text("s\n")
    (root / "etc" / "secret").chmod(0o600)
    (root / "empty").mkdir()
    os.symlink("bin/hello", root / "hello-link")
    os.symlink("/does/not/exist", root / "dangling")


def snapshot(root) -> dict:
    """Path -> (kind, mode, content/target): what must survive a round trip."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            elif not stat.S_ISREG(st.st_mode):
                out[rel] = ("special", stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode))
            else:
                with open(p, "rb") as f:
                    out[rel] = ("file", stat.S_IMODE(st.st_mode), f.read())
    return out


def sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def partition_compressor(sif_path) -> str:
    """Read the compressor from the superblock with `unsquashfs -s`, on the partition bytes alone."""
    with SifFile.open(sif_path) as f:
        part = f.primary_partition()
    raw = os.path.join(os.path.dirname(sif_path), "part.sqfs")
    with open(sif_path, "rb") as src, open(raw, "wb") as dst:
        src.seek(part.offset)
        dst.write(src.read(part.size))
    out = subprocess.run(["unsquashfs", "-s", raw], capture_output=True, text=True, check=True).stdout
    os.unlink(raw)
    return next(ln.split()[1] for ln in out.splitlines() if ln.startswith("Compression"))


@needs_squashfs
def test_build_sif_objects_and_round_trip(tmp_path):
    src = tmp_path / "tree"
    make_tree(src)
    out = tmp_path / "img.sif"
    build_sif(src, out, deffile=b"Bootstrap: scratch\n", labels={"org": "yurt"}, runscript=b"#!/bin/sh\n",
              env_script=b"export A=1\n", oci_config={"Env": ["A=1"]})
    with SifFile.open(out) as f:
        kinds = [(d.data_type, d.name) for d in f.descriptors]
        assert kinds == [
            (DataType.DEFFILE, ""), (DataType.LABELS, ""), (DataType.ENVVAR, ""),
            (DataType.GENERIC, "runscript"), (DataType.GENERIC_JSON, INSPECT_METADATA),
            (DataType.GENERIC_JSON, OCI_CONFIG), (DataType.PARTITION, ""),
        ]
        part = f.primary_partition()
        assert (part.fs_type, part.part_type) == (FsType.SQUASH, PartType.PRIM_SYS)
        assert part.part_arch == host_arch_code()
        assert part.offset % 4096 == 0 and f.header.arch == host_arch_code()
        assert json.loads(f.read_object(f.find(DataType.LABELS)[0])) == {"org": "yurt"}
        meta = json.loads(f.read_object(f.find(DataType.GENERIC_JSON, INSPECT_METADATA)[0]))
        assert meta["type"] == "container" and meta["data"]["attributes"]["labels"] == {"org": "yurt"}
        offset = part.offset
    dest = tmp_path / "extracted"
    unsquashfs_extract(out, offset, dest)
    assert snapshot(dest) == snapshot(src)
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n or ".squashfs-" in n]


@needs_squashfs
def test_build_sif_is_reproducible_with_source_date_epoch(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))
    src = tmp_path / "tree"
    make_tree(src)
    build_sif(src, tmp_path / "a.sif", labels={"k": "v"}, processors=1)
    for p in (src / "etc" / "motd", src / "etc", src):  # file and directory times must not leak in
        os.utime(p, (1, 1))
    build_sif(src, tmp_path / "b.sif", labels={"k": "v"}, processors=2)
    assert sha256(tmp_path / "a.sif") == sha256(tmp_path / "b.sif")
    with SifFile.open(tmp_path / "a.sif") as f:
        assert f.header.created_at == EPOCH and f.header.id == bytes(16)
        assert {d.created_at for d in f.descriptors} == {EPOCH}


@needs_squashfs
@pytest.mark.parametrize("comp", ["xz", "lz4", "zstd"])
def test_compression_choice_reaches_the_partition(tmp_path, comp):
    src = tmp_path / "tree"
    make_tree(src)
    build_sif(src, tmp_path / "c.sif", compression=comp)
    assert partition_compressor(str(tmp_path / "c.sif")) == comp


def test_unknown_compression_lists_choices(tmp_path):
    with pytest.raises(ImageError) as e:
        mksquashfs(tmp_path, tmp_path / "x.sqfs", compression="brotli")
    assert "gzip, zstd, lz4, xz, lzo" in str(e.value)


def test_missing_mksquashfs_is_explained(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    (tmp_path / "t").mkdir()
    with pytest.raises(ImageError, match="install squashfs-tools"):
        mksquashfs(tmp_path / "t", tmp_path / "x.sqfs")


@needs_squashfs
def test_mksquashfs_failure_reports_its_stderr(tmp_path):
    (tmp_path / "t").mkdir()
    with pytest.raises(ImageError, match="mksquashfs failed: invalid option"):
        mksquashfs(tmp_path / "t", tmp_path / "x.sqfs", extra_args=["-bogus-option"])


@needs_squashfs
def test_build_sif_failure_leaves_no_temp_files(tmp_path):
    src = tmp_path / "tree"
    make_tree(src)
    with pytest.raises(ImageError):
        build_sif(src, tmp_path / "x.sif", mksquashfs_args=["-bogus-option"])
    assert sorted(os.listdir(tmp_path)) == ["tree"]


def test_build_sif_input_errors(tmp_path):
    with pytest.raises(ImageError, match="not a directory"):
        build_sif(tmp_path / "missing", tmp_path / "x.sif")
    with pytest.raises(ImageError, match="does not exist"):
        build_sif(tmp_path, tmp_path / "no" / "x.sif")


def test_default_processors_respects_slurm(monkeypatch):
    monkeypatch.delenv("SLURM_CPUS_ON_NODE", raising=False)
    n = default_processors()
    assert n == len(os.sched_getaffinity(0))
    monkeypatch.setenv("SLURM_CPUS_ON_NODE", "1")
    assert default_processors() == 1
    monkeypatch.setenv("SLURM_CPUS_ON_NODE", str(n + 100))
    assert default_processors() == n


@needs_squashfs
def test_mksquashfs_epoch_and_processors_flags(tmp_path, monkeypatch):
    calls = []
    real_run = subprocess.run

    def spy(cmd, **kw):
        calls.append((cmd, kw.get("env")))
        return real_run(cmd, **kw)

    monkeypatch.setattr(Q.subprocess, "run", spy)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "5")
    (tmp_path / "t").mkdir()
    mksquashfs(tmp_path / "t", tmp_path / "x.sqfs", processors=3, reproducible_epoch=EPOCH, all_root=True)
    cmd, env = calls[0]
    assert cmd[cmd.index("-processors") + 1] == "3" and "-noappend" in cmd and "-all-root" in cmd
    assert cmd[cmd.index("-mkfs-time") + 1] == cmd[cmd.index("-all-time") + 1] == str(EPOCH)
    assert "SOURCE_DATE_EPOCH" not in env  # mksquashfs 4.5 refuses both at once


# --- unsquashfs_extract ----------------------------------------------------------------------


@needs_squashfs
def test_extract_at_offset_and_refuse_existing(tmp_path):
    src = tmp_path / "tree"
    make_tree(src)
    mksquashfs(src, tmp_path / "fs.sqfs")
    blob = tmp_path / "blob"
    blob.write_bytes(b"\xff" * 12345 + (tmp_path / "fs.sqfs").read_bytes())
    unsquashfs_extract(blob, 12345, tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(src)
    with pytest.raises(ImageError, match="already exists"):
        unsquashfs_extract(blob, 12345, tmp_path / "out")


@needs_squashfs
def test_extract_garbage_fails_cleanly(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(os.urandom(8192))
    with pytest.raises(ImageError, match="cannot extract"):
        unsquashfs_extract(bad, 100, tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["bad"]
    with pytest.raises(ImageError):
        unsquashfs_extract(bad, -1, tmp_path / "out2")


def _unprivileged_python(repo: str) -> list[str] | None:
    """A command prefix running a Python that can import yurt as an unprivileged user."""
    if os.geteuid() != 0:
        return [sys.executable]
    if shutil.which("setpriv") is None:
        return None
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    for python in (sys.executable, shutil.which("python3")):
        if not python:
            continue
        probe = subprocess.run([*drop, python, "-c", f"import sys; sys.path.insert(0, {repo!r}); "
                                "import hashlib, yurt.image.squashfs; hashlib.file_digest"],
                               capture_output=True)
        if probe.returncode == 0:
            return [*drop, python]
    return None


@needs_squashfs
def test_extract_unprivileged_skips_device_nodes(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(Q.__file__))))
    python = _unprivileged_python(repo)
    if python is None:
        pytest.skip("no way to run Python unprivileged here")
    # pytest's tmp_path may sit under a root-only directory: use a world-writable scratch dir.
    work = tempfile.mkdtemp(prefix="yurt-unpriv-")
    try:
        os.chmod(work, 0o777)
        src = tmp_path / "tree"
        make_tree(src)
        image = os.path.join(work, "dev.sqfs")
        mksquashfs(src, image, extra_args=["-p", "dev d 755 0 0", "-p", "dev/null c 666 0 0 1 3"])
        os.chmod(image, 0o644)
        out = os.path.join(work, "out")
        script = (f"import sys; sys.path.insert(0, {repo!r}); "
                  "from yurt.image.squashfs import unsquashfs_extract; "
                  f"unsquashfs_extract({image!r}, 0, {out!r})")
        proc = subprocess.run([*python, "-c", script], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert os.path.isdir(os.path.join(out, "dev"))
        assert not os.path.lexists(os.path.join(out, "dev", "null"))
        with open(os.path.join(out, "etc", "motd")) as f:
            assert f.read() == "welcome\n"
        assert os.readlink(os.path.join(out, "hello-link")) == "bin/hello"
    finally:
        Q.remove_tree(work)


# --- sandbox ---------------------------------------------------------------------------------


def test_build_sandbox_copies_tree(tmp_path):
    src = tmp_path / "tree"
    make_tree(src)
    os.mkfifo(src / "fifo")
    out = tmp_path / "sandbox"
    build_sandbox(src, out)
    assert snapshot(out) == snapshot(src)
    assert stat.S_ISFIFO(os.lstat(out / "fifo").st_mode)
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


def test_build_sandbox_refuses_existing_and_bad_input(tmp_path):
    src = tmp_path / "tree"
    make_tree(src)
    (tmp_path / "exists").mkdir()
    with pytest.raises(ImageError, match="already exists"):
        build_sandbox(src, tmp_path / "exists")
    with pytest.raises(ImageError, match="not a directory"):
        build_sandbox(tmp_path / "missing", tmp_path / "new")
    with pytest.raises(ImageError, match="does not exist"):
        build_sandbox(src, tmp_path / "no" / "new")
