"""An image whose ``/dev`` holds real device nodes, used by an unprivileged user.

As root in a user namespace (a subuid build, ``unshare -r``) unsquashfs believes it is superuser,
tries ``mknod`` and the kernel says EPERM: the node must be skipped, as without privileges, not end
the build.  The rest of the tree, the FIFO included, must come through.

* rootless: a squashfs with device nodes made by ``mksquashfs -p`` (no root needed), extracted
  by :func:`yurt.image.squashfs.unsquashfs_extract` as root in ``unshare -r``;
* root-only (``pytest -m root``): a base SIF built as root from a tree with ``mknod``-made
  devices (as a debootstrap tree has); the test user builds ``FROM`` it with a ``%post`` in both
  rootless modes, and runs it with ``--unsquash``, plainly and in ``unshare -r``.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from installed_yurt import yurt_argv

DEVICES = {"dev/null": (stat.S_IFCHR, 1, 3), "dev/zero": (stat.S_IFCHR, 1, 5), "dev/loop0": (stat.S_IFBLK, 7, 0)}


def _listing(sif: Path) -> dict[str, str]:
    """``{path: mode string}`` from ``unsquashfs -lln`` of the SIF's partition."""
    from yurt.image.sif import SifFile

    with SifFile.open(sif) as f:
        offset = f.primary_partition().offset
    out = subprocess.run(["unsquashfs", "-o", str(offset), "-lln", "-d", "", str(sif)], capture_output=True,
                         text=True, check=True).stdout
    # "crw-rw-rw- 0/0  1,  3 2024-01-01 00:00 /dev/null": devices have two size fields
    found = (re.match(r"(\S+) .*? \d{4}-\d\d-\d\d \d\d:\d\d (.*)$", line) for line in out.splitlines())
    return {m.group(2).split(" -> ")[0]: m.group(1) for m in found if m}


def _has_subuid(name: str) -> bool:
    def listed(path: str) -> bool:
        try:
            with open(path) as f:
                return any(line.split(":")[0] == name for line in f)
        except OSError:
            return False

    return listed("/etc/subuid") and listed("/etc/subgid") and shutil.which("newuidmap") is not None


@pytest.fixture
def shared(test_user):
    """A directory of the test user's (root's pytest tmp is 0700), with its own caches."""
    path = Path(tempfile.mkdtemp(prefix="yurt-devnodes-", dir="/var/tmp"))
    for sub in ("", "cache", "local"):
        (path / sub).mkdir(exist_ok=True)
        os.chown(path / sub, test_user.pw.pw_uid, test_user.pw.pw_gid)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def base_sif(busybox_rootfs, shared, yurt_cmd) -> Path:
    """The busybox tree plus real device nodes and a FIFO in /dev, built into a SIF as root."""
    tree = shared / "tree"
    subprocess.run(["cp", "-a", str(busybox_rootfs), str(tree)], check=True)
    (tree / "dev").mkdir(exist_ok=True)
    for name, (kind, major, minor) in DEVICES.items():
        os.mknod(tree / name, kind | 0o666, os.makedev(major, minor))
    os.mkfifo(tree / "dev" / "fifo")
    out = shared / "base.sif"
    r = yurt_cmd("build", out, tree, timeout=300)
    assert r.returncode == 0, r.stderr
    out.chmod(0o644)
    listing = _listing(out)
    assert listing["/dev/null"].startswith("c") and listing["/dev/loop0"].startswith("b")  # really in the image
    return out


@pytest.mark.requires("mksquashfs", "unsquashfs", "unshare")
def test_extract_as_root_in_a_user_namespace_skips_device_nodes(tmp_path):
    src = tmp_path / "src"
    (src / "dev").mkdir(parents=True)
    (src / "etc").mkdir()
    (src / "etc" / "kept").write_text("kept\n")
    os.mkfifo(src / "dev" / "fifo")
    img = tmp_path / "img.sqfs"
    subprocess.run(["mksquashfs", str(src), str(img), "-quiet", "-no-progress", "-all-root",
                    "-p", "dev/null c 666 0 0 1 3", "-p", "dev/loop0 b 660 0 0 7 0"], check=True, capture_output=True)
    code = ("import sys; from yurt.image.squashfs import unsquashfs_extract; "
            "unsquashfs_extract(sys.argv[1], 0, sys.argv[2])")
    dest = tmp_path / "out"
    r = subprocess.run(["unshare", "-r", sys.executable, "-c", code, str(img), str(dest)], capture_output=True,
                       text=True, timeout=120)
    if r.returncode != 0 and "unshare failed" in r.stderr:
        pytest.skip(f"no user namespace here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    assert (dest / "etc" / "kept").read_text() == "kept\n" and stat.S_ISFIFO(os.lstat(dest / "dev" / "fifo").st_mode)
    assert sorted(os.listdir(dest / "dev")) == ["fifo"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".out")]  # no temporary left


@pytest.mark.parametrize(("line", "benign"), [
    ("create_inode: failed to create character device /x/dev/null, because Operation not permitted", True),
    ("create_inode: failed to create block device /x/dev/loop0, because Operation not permitted", True),
    ("create_inode: could not create character device /x/dev/null, because you're not superuser!", True),
    ("create_inode: failed to create character device /x/dev/null, because No space left on device", False),
    ("write_file: failed to create file /x/etc/passwd, because Operation not permitted", False),
    ("create_inode: failed to create named pipe /x/dev/fifo, because Operation not permitted", False),
])
def test_only_a_refused_mknod_is_benign(line, benign):
    from yurt.image.squashfs import _BENIGN_EXTRACT_ERRORS

    assert bool(_BENIGN_EXTRACT_ERRORS.search(line)) is benign


def _user_env(shared: Path, **more: str) -> dict[str, str]:
    return {"YURT_CACHEDIR": str(shared / "cache"), "YURT_LOCAL_CACHEDIR": str(shared / "local"), **more}


@pytest.mark.root
@pytest.mark.parametrize("source", ["sif", "directory"])
@pytest.mark.parametrize("mode", ["subuid", "single"])
def test_rootless_post_on_a_base_with_device_nodes(base_sif, shared, test_user, mode, source):
    if mode == "subuid" and not _has_subuid(test_user.name):
        pytest.skip(f"{test_user.name} has no /etc/subuid range")
    base = base_sif
    if source == "directory":  # the tree the SIF was made of, handed to the user (as a sandbox of theirs)
        base = shared / "tree-user"
        subprocess.run(["cp", "-a", str(shared / "tree"), str(base)], check=True)
        subprocess.run(["chown", "-R", f"{test_user.pw.pw_uid}:{test_user.pw.pw_gid}", str(base)], check=True)
        assert stat.S_ISCHR(os.lstat(base / "dev" / "null").st_mode)
    recipe = shared / "dev.def"
    recipe.write_text(f"Bootstrap: localimage\nFrom: {base}\n\n%post\n    echo post-ran > /post-ran\n")
    recipe.chmod(0o644)
    out = shared / f"out-{mode}.sif"
    env = _user_env(shared, YURT_BUILD_IGNORE_SUBUID="1" if mode == "single" else "")
    r = test_user.yurt("build", out, recipe, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert ("single-id fakeroot" if mode == "single" else "fakeroot with a subuid range") in r.stderr
    listing = _listing(out)
    assert "/post-ran" in listing and listing["/dev/fifo"].startswith("p") and "/bin/busybox" in listing
    assert not any(name in listing for name in ("/dev/null", "/dev/zero", "/dev/loop0"))  # skipped: no mknod
    r = test_user.yurt("exec", out, "cat", "/post-ran", env=_user_env(shared), timeout=120)
    assert r.returncode == 0 and r.stdout == "post-ran\n", r.stderr


@pytest.mark.root
@pytest.mark.parametrize("in_userns", [False, True])
def test_unsquash_runs_a_base_with_device_nodes(base_sif, shared, test_user, in_userns):
    """--unsquash unpacks with unsquashfs: plainly it is not superuser; under ``unshare -r`` it thinks it is."""
    args = ["exec", "--unsquash", base_sif, "sh", "-c", "echo ran"]
    if in_userns:  # the test user's own user namespace, as root in it: runuser first, then unshare
        env = [f"HOME={test_user.pw.pw_dir}",
               *(f"{k}={v}" for k, v in _user_env(shared).items())]
        r = subprocess.run(["runuser", "-u", test_user.name, "--", "unshare", "-r", "env", *env,
                            *yurt_argv(), *map(str, args)],
                           capture_output=True, text=True, cwd="/", timeout=120)
    else:
        r = test_user.yurt(*args, env=_user_env(shared), timeout=120)
    assert r.returncode == 0 and r.stdout == "ran\n", r.stderr
    assert "cannot extract" not in r.stderr
    trees = list((shared / "local" / "unpacked").iterdir())  # /dev in the container is the host's: look here
    assert len(trees) == 1 and stat.S_ISFIFO(os.lstat(trees[0] / "dev" / "fifo").st_mode)
    assert (trees[0] / "bin" / "busybox").is_file() and not os.path.lexists(trees[0] / "dev" / "null")
