"""The hostile-user defences as the unprivileged user, with a site file named by ``YURT_SITE_CONFIG``
(honoured only while ``/etc/yurt/yurt.toml`` does not exist; a policy in it is in force all the same).
The same attacks with a real site file, and by a second user, are in ``test_policy_attacks.py``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from yurt.errors import RuntimeSetupError

pytestmark = [pytest.mark.userns]

if os.geteuid() == 0:
    pytest.skip("rootless tests run as the unprivileged test user", allow_module_level=True)
if os.path.lexists("/etc/yurt/yurt.toml"):
    pytest.skip("a site file is installed on this machine", allow_module_level=True)


def ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, f"rc={r.returncode}\nstdout={r.stdout}\nstderr={r.stderr}"
    return r.stdout


@pytest.fixture
def policy_env(tmp_path):
    site = tmp_path / "site.toml"
    site.write_text("deny_binds = []\n")  # any policy key puts the policy in force
    return {"YURT_SITE_CONFIG": str(site), "YURT_LOCAL_CACHEDIR": str(tmp_path / "local")}


def _in_namespaces(func) -> tuple[int, str]:
    """Run ``func()`` in a forked child inside a new user and mount namespace; (exit code, its message)."""
    from yurt import syscalls as sc
    from yurt.runtime import idmap

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            uid, gid = os.getuid(), os.getgid()
            sc.unshare(sc.CLONE_NEWUSER | sc.CLONE_NEWNS)
            maps = idmap.true_identity(uid, gid)
            idmap.write_own_maps(*maps)
            sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
            os.write(w, str(func()).encode())
        except RuntimeSetupError as e:
            os.write(w, f"RuntimeSetupError: {e}".encode())
            code = 3
        except BaseException as e:  # noqa: BLE001 - a forked child never returns into pytest
            os.write(w, repr(e).encode())
            code = 1
        os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        message = f.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), message


def test_directory_image_is_bound_only_if_it_is_the_one_opened(tmp_path):
    from yurt.image.rootfs import DirectoryRootfs
    from yurt.image.source import open_image

    img = tmp_path / "img"
    img.mkdir()
    (img / "marker").write_text("checked\n")
    session = tmp_path / "session"
    session.mkdir()

    def attach_after(swap: bool):
        def run():
            image = open_image(str(img))
            rootfs = DirectoryRootfs(image.path, fd=image.fd)
            if swap:  # the checked directory is moved away and another put in its place
                os.rename(img, tmp_path / "moved")
                (tmp_path / "other").mkdir()
                (tmp_path / "other" / "marker").write_text("other\n")
                os.rename(tmp_path / "other", img)
            from yurt import syscalls as sc

            sc.mount("tmpfs", str(session), "tmpfs")
            where = rootfs.attach(str(session / "image"))
            return Path(where, "marker").read_text()
        return run

    assert _in_namespaces(attach_after(False)) == (0, "checked\n")
    code, message = _in_namespaces(attach_after(True))
    assert code == 3 and "was replaced while the container was starting" in message, message


def test_private_unpack_under_policy_leaves_nothing_shared(yurt_cmd, busybox_sif, policy_env, tmp_path):
    for extra in ([], ["--pid"]):
        r = yurt_cmd("exec", "--unsquash", *extra, busybox_sif, "sh", "-c", "test -x /bin/busybox && echo in-image",
                     env=policy_env)
        assert ok(r) == "in-image\n"
        notices = [ln for ln in r.stderr.splitlines() if ln.startswith("yurt: notice:")]
        assert len(notices) == 1 and "for this run only" in notices[0], r.stderr
    assert not (tmp_path / "local").exists()  # the shared node-local cache was not even made
    # without the policy the shared cache is used, as before
    env = {**policy_env, "YURT_SITE_CONFIG": None}
    ok(yurt_cmd("exec", "--unsquash", busybox_sif, "true", env=env))
    assert len(list((tmp_path / "local" / "unpacked").iterdir())) == 1


@pytest.mark.fuse
def test_planted_squashfuse_on_path_is_used_only_without_policy(yurt_cmd, busybox_sif, policy_env, tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "fake-ran"
    for name in ("squashfuse_ll", "squashfuse"):
        (fake / name).write_text(f"#!/bin/sh\necho ran >> {log}\nexec /usr/bin/squashfuse_ll \"$@\"\n")
        (fake / name).chmod(0o755)
    path = f"{fake}:{os.environ['PATH']}"
    ok(yurt_cmd("exec", busybox_sif, "true", env={**policy_env, "YURT_SITE_CONFIG": None, "PATH": path}))
    assert log.read_text() == "ran\n"  # the user's own tools, when no policy says otherwise
    ok(yurt_cmd("exec", busybox_sif, "true", env={**policy_env, "PATH": path}))
    assert log.read_text() == "ran\n"  # not again: under the policy only the site's helper directories count


def test_missing_helper_under_policy_is_one_clear_line(yurt_cmd, busybox_sif, tmp_path):
    site = tmp_path / "site.toml"
    site.write_text(f'helper_path = ["{tmp_path}"]\n')  # the user's own directory: never trusted
    r = yurt_cmd("exec", "--unsquash", busybox_sif, "true", env={"YURT_SITE_CONFIG": str(site)})
    assert r.returncode == 255 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("yurt: error: unsquashfs not found in the site's helper "
                                                   "directories"), r.stderr
