"""Root-only paths: kernel squashfs through a loop device, and FUSE made unusable.

Run by the root pass of ``make test`` (``pytest -m root``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

pytestmark = [pytest.mark.root]


def _loop_devices_for(path: str) -> list[str]:
    out = subprocess.run(["losetup", "-j", str(path)], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def test_root_uses_kernel_squashfs_and_releases_the_loop_device(yurt_cmd, busybox_sif):
    r = yurt_cmd("--debug", "exec", busybox_sif, "sh", "-c", "id -u; grep NoNewPrivs /proc/self/status; exit 6")
    assert r.returncode == 6, r.stderr
    assert r.stdout.split()[0] == "0"
    assert "NoNewPrivs:\t1" in r.stdout
    assert "kernel squashfs" in r.stderr
    assert _loop_devices_for(busybox_sif) == []  # autoclear: gone with the mount namespace


def test_root_runs_without_user_namespace(yurt_cmd, busybox_rootfs):
    out = yurt_cmd("exec", busybox_rootfs, "readlink", "/proc/self/ns/user").stdout.strip()
    assert out == os.readlink("/proc/self/ns/user")


def test_root_mounts_are_nosuid_nodev(yurt_cmd, busybox_sif):
    out = yurt_cmd("exec", busybox_sif, "grep", " / ", "/proc/mounts").stdout
    opts = out.split()[3].split(",")
    assert "nosuid" in opts and "nodev" in opts and "ro" in opts


@pytest.fixture
def shared_dir():
    """A directory the unprivileged test user can reach (root's pytest tmp is 0700)."""
    path = tempfile.mkdtemp(prefix="yurt-root-test-", dir="/var/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_unusable_fuse_falls_back_with_one_notice(busybox_sif, shared_dir, test_user):
    """/dev/fuse at 0600 (as on some sites): the test user gets an unpacked copy and one notice."""
    sif = os.path.join(shared_dir, "img.sif")
    shutil.copy(busybox_sif, sif)
    os.chmod(sif, 0o644)
    fake = os.path.join(shared_dir, "fuse0600")
    cache = os.path.join(shared_dir, "cache")
    os.mkdir(cache)
    os.chown(cache, test_user.pw.pw_uid, test_user.pw.pw_gid)
    setup = f'mknod {fake} c 10 229 && chmod 0600 {fake} && mount --bind {fake} /dev/fuse && exec "$@"'
    r = test_user.yurt(
        "exec",
        sif,
        "echo",
        "fell-back",
        env={"YURT_LOCAL_CACHEDIR": cache},
        timeout=120,
        prefix=["unshare", "-m", "--propagation", "private", "sh", "-c", setup, "sh"],
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "fell-back\n"
    notices = [line for line in r.stderr.splitlines() if line.startswith("yurt: notice:")]
    assert len(notices) == 1 and "/dev/fuse" in notices[0]


def test_supplementary_groups_still_grant_access(busybox_rootfs, shared_dir, test_user):
    """A file only the test user's supplementary group may read stays readable in the container."""
    import grp

    extra = [g.gr_gid for g in grp.getgrall() if test_user.name in g.gr_mem and g.gr_gid != test_user.pw.pw_gid]
    if not extra:
        pytest.skip(f"{test_user.name} has no supplementary group")
    rootfs = os.path.join(shared_dir, "rootfs")
    shutil.copytree(busybox_rootfs, rootfs, symlinks=True)
    secret = os.path.join(shared_dir, "group-only")
    with open(secret, "w") as f:
        f.write("group ok\n")
    os.chown(secret, 0, extra[0])
    os.chmod(secret, 0o640)
    r = test_user.yurt("exec", rootfs, "cat", secret)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "group ok\n"
