"""Site policy (``/etc/yurt/yurt.toml``) enforced on the unprivileged user.

The policy only means something when the user cannot change it, so these tests run as root,
install a real site file for the duration of one test (removing it, or restoring what was there,
even when the test fails) and run yurt as the test user.  Run by the root pass of ``make test``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root]


@pytest.fixture
def shared_dir():
    """A directory the unprivileged test user can reach (root's pytest tmp is 0700)."""
    path = tempfile.mkdtemp(prefix="yurt-config-test-", dir="/var/tmp")
    os.chmod(path, 0o755)
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


def _image(busybox_rootfs: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(busybox_rootfs, dest, symlinks=True)
    os.chmod(dest, 0o755)
    return dest


def _fails(r, *words: str) -> None:
    assert r.returncode == 255, f"rc={r.returncode}\nstdout={r.stdout}\nstderr={r.stderr}"
    for w in words:
        assert w in r.stderr, r.stderr


def _ok(r) -> str:
    assert r.returncode == 0, f"rc={r.returncode}\nstdout={r.stdout}\nstderr={r.stderr}"
    return r.stdout


def test_site_bind_appears_and_denied_binds_are_refused(site_file, shared_dir, busybox_rootfs, test_user):
    img = _image(busybox_rootfs, shared_dir / "img")
    (shared_dir / "scratch").mkdir()
    (shared_dir / "scratch" / "hello").write_text("site scratch\n")
    secret = shared_dir / "secret"
    secret.mkdir(mode=0o755)
    site_file.install(f'site_binds = ["{shared_dir}/scratch:/scratch", "/no/such/dir"]\n'
              f'deny_binds = ["{secret}"]\n')
    assert _ok(test_user.yurt("exec", img, "cat", "/scratch/hello")) == "site scratch\n"
    _fails(test_user.yurt("exec", "-B", f"{secret}:/s", img, "true"), "the site denies binding", str(secret))
    _fails(test_user.yurt("exec", "-B", f"{shared_dir}:/all", img, "true"), "the site denies binding")
    _fails(test_user.yurt("exec", "--home", f"{secret}/me", img, "true"), "--home")
    _ok(test_user.yurt("exec", "-B", f"{shared_dir}/scratch:/other", img, "true"))


def test_images_outside_allowed_locations_or_owners_are_refused(site_file, shared_dir, busybox_rootfs, test_user):
    good = _image(busybox_rootfs, shared_dir / "images" / "good")
    elsewhere = _image(busybox_rootfs, shared_dir / "elsewhere" / "img")
    users = _image(busybox_rootfs, shared_dir / "images" / "users")
    os.chown(users, test_user.pw.pw_uid, test_user.pw.pw_gid)
    link = shared_dir / "images" / "link"
    link.symlink_to(elsewhere)
    site_file.install(f'allowed_image_paths = ["{shared_dir}/images"]\nallowed_image_owners = ["root"]\n')
    assert _ok(test_user.yurt("exec", good, "echo", "ran")) == "ran\n"
    _fails(test_user.yurt("exec", elsewhere, "true"), "not in a location the site allows")
    _fails(test_user.yurt("exec", link, "true"), "not in a location the site allows")
    _fails(test_user.yurt("exec", users, "true"), f"owned by {test_user.name}", "allowed_image_owners")


def test_disallowed_registry_is_refused_without_contacting_it(site_file, shared_dir, busybox_rootfs, test_user):
    img = _image(busybox_rootfs, shared_dir / "img")
    site_file.install('allowed_registries = ["registry.example.org"]\n')
    for args in (("pull", "docker://quay.io/org/tool:1"), ("exec", "docker://quay.io/org/tool:1", "true"),
                 ("pull", "oras://quay.io/org/tool:1"), ("push", img, "docker://quay.io/org/tool:1")):
        _fails(test_user.yurt(*args, timeout=60), "registry quay.io", "is not allowed by the site")


def test_user_cannot_loosen_site_policy(site_file, shared_dir, busybox_rootfs, test_user):
    img = _image(busybox_rootfs, shared_dir / "img")
    secret = shared_dir / "secret"
    secret.mkdir(mode=0o755)
    site_file.install(f'deny_binds = ["{secret}"]\n')
    xdg = shared_dir / "xdg"
    (xdg / "yurt").mkdir(parents=True)
    user_file = xdg / "yurt" / "config.toml"
    loose = shared_dir / "loose.toml"
    loose.write_text("deny_binds = []\n")
    for p in (xdg, xdg / "yurt", loose):
        os.chown(p, test_user.pw.pw_uid, test_user.pw.pw_gid)
    env = {"XDG_CONFIG_HOME": str(xdg)}
    # a user file setting policy is an error, not a loosening
    user_file.write_text("deny_binds = []\n")
    _fails(test_user.yurt("exec", "-B", f"{secret}:/s", img, "true", env=env), "deny_binds is site policy")
    # another "site file" named in the environment is ignored while the real one exists
    user_file.write_text("contain = true\n")
    r = test_user.yurt("exec", "-B", f"{secret}:/s", img, "true", env={**env, "YURT_SITE_CONFIG": str(loose)})
    _fails(r, "the site denies binding")
    shown = _ok(test_user.yurt("config", "show", env={**env, "YURT_SITE_CONFIG": str(loose)}))
    assert "YURT_SITE_CONFIG" in shown and "ignored" in shown
    assert f"deny_binds = [\"{secret}\"]" in shown and "contain = true" in shown
    # ... while the user's own settings work
    assert _ok(test_user.yurt("exec", img, "sh", "-c", "ls -A /tmp | wc -l", env=env)).strip() == "0"


def test_site_file_the_user_could_write_is_refused(site_file, shared_dir, busybox_rootfs, test_user):
    img = _image(busybox_rootfs, shared_dir / "img")
    path = site_file.install("contain = false\n")
    _ok(test_user.yurt("exec", img, "true"))
    os.chown(path, test_user.pw.pw_uid, test_user.pw.pw_gid)
    _fails(test_user.yurt("exec", img, "true"), "writable by you")


def test_require_signed_images_is_rejected_until_signing_exists(site_file, shared_dir, busybox_rootfs, test_user):
    img = _image(busybox_rootfs, shared_dir / "img")
    site_file.install("require_signed_images = true\n")
    _fails(test_user.yurt("exec", img, "true"), "require_signed_images", "cannot sign or verify")
