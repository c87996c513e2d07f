"""The issue's headline, for real: a Debian bookworm image made by debootstrap, pushed to a real
registry by skopeo, then ``yurt exec docker://HOST/debian:bookworm cat /etc/os-release``.

debootstrap needs root, so this runs in the root pass; the tree is cached under
``/var/tmp/yurt-ci/debian-bookworm`` (``$YURT_TEST_DEBIAN_ROOTFS``) across runs on one machine.
The pulled SIF is then also run by the unprivileged test user (squashfuse, zstd).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.root]

@pytest.fixture(scope="session")
def pushed_debian(debian_rootfs, registry_http, umoci_image, skopeo_push, tmp_path_factory) -> str:
    layout = tmp_path_factory.mktemp("debian") / "layout"
    umoci_image(layout, "bookworm", debian_rootfs)
    skopeo_push(layout, "bookworm", f"{registry_http.host}/library/debian:bookworm")
    return f"{registry_http.host}/library/debian:bookworm"


def test_exec_debian_from_registry(yurt_cmd, pushed_debian, registry_http, tmp_path):
    env = {"YURT_CACHEDIR": str(tmp_path / "cache"), "YURT_INSECURE_REGISTRIES": registry_http.host}
    r = yurt_cmd("exec", f"docker://{pushed_debian}", "cat", "/etc/os-release", env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"' in r.stdout
    # a dynamically linked toolchain works inside; file ownership from the image is kept (root)
    r = yurt_cmd(
        "exec",
        f"docker://{pushed_debian}",
        "sh",
        "-c",
        "apt-get --version | head -1; stat -c %u /usr/bin/apt-get",
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("apt ") and r.stdout.split()[-1] == "0"


def test_pulled_debian_runs_rootless(yurt_cmd, pushed_debian, test_user, tmp_path):
    shared = Path(tempfile.mkdtemp(prefix="yurt-debian-", dir="/var/tmp"))
    try:
        shared.chmod(0o755)
        sif = shared / "debian.sif"
        r = yurt_cmd(
            "pull",
            "--insecure",
            str(sif),
            f"docker://{pushed_debian}",
            env={"YURT_CACHEDIR": str(tmp_path / "cache")},
            timeout=600,
        )
        assert r.returncode == 0, r.stderr
        sif.chmod(0o644)
        # the host is Debian 12 too: tell them apart by python3, which minbase lacks and the host has
        r = test_user.yurt(
            "exec",
            sif,
            "sh",
            "-c",
            ". /etc/os-release; echo $ID $VERSION_ID; id -u; test -e /usr/bin/python3 || echo image",
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["debian", "12", str(test_user.pw.pw_uid), "image"]
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_apt_get_in_single_id_fakeroot_with_fake_ownership(debian_rootfs, test_user):
    """What unprivileged builds need: apt-get works with one mapped id once chown & co. are faked
    (and apt's _apt sandbox user is off); without the filter, a package that chowns fails."""
    shared = Path(tempfile.mkdtemp(prefix="yurt-apt-", dir="/var/tmp"))
    try:
        shared.chmod(0o755)
        sandbox = shared / "debian"
        # cp -a, not shutil.copytree: debootstrap leaves device nodes in dev/, and copytree would read
        # /dev/full or /dev/zero into a regular file forever.
        subprocess.run(["cp", "-a", str(debian_rootfs), str(sandbox)], check=True)
        subprocess.run(["chown", "-R", f"{test_user.pw.pw_uid}:{test_user.pw.pw_gid}", str(sandbox)], check=True)
        (shared / "apt.conf").write_text('APT::Sandbox::User "root";\n')
        (shared / "apt.conf").chmod(0o644)
        flags = [
            "exec",
            "--writable",
            "--fakeroot",
            "--ignore-subuid",
            "--no-home",
            "-B",
            f"{shared}:/cfg",
            "--env",
            "APT_CONFIG=/cfg/apt.conf",
        ]
        r = test_user.yurt(
            *flags,
            "--fake-ownership",
            sandbox,
            "sh",
            "-c",
            "apt-get update -qq && apt-get install -y -qq hello >/dev/null && hello",
            timeout=600,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.strip().endswith("Hello, world!")
        r = test_user.yurt(*flags, sandbox, "sh", "-c", "apt-get install -y -qq man-db", timeout=600)
        assert r.returncode != 0 and "chown" in (r.stdout + r.stderr)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
