"""User configuration (``~/.config/yurt/config.toml``) acting on real containers, as the
unprivileged user, on a machine without a site file (``/etc/yurt/yurt.toml``).

The site policy itself is enforced for the user in ``test_config_root.py``, where the site file is
one the user cannot write.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.userns]

if os.geteuid() == 0:
    pytest.skip("rootless tests run as the unprivileged test user", allow_module_level=True)
if os.path.lexists("/etc/yurt/yurt.toml"):
    pytest.skip("a site file is installed on this machine", allow_module_level=True)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"rc={result.returncode}\nstdout={result.stdout}\nstderr={result.stderr}"
    return result.stdout


def _user_config(tmp_path: Path, text: str) -> dict[str, str]:
    xdg = tmp_path / "xdg"
    (xdg / "yurt").mkdir(parents=True, exist_ok=True)
    (xdg / "yurt" / "config.toml").write_text(text)
    return {"XDG_CONFIG_HOME": str(xdg), "YURT_CONTAIN": None, "YURT_SITE_CONFIG": None}


def test_user_config_contain_default_and_the_flag_that_turns_it_off(yurt_cmd, busybox_rootfs, tmp_path):
    (tmp_path / "marker").write_text("x")
    probe = f"ls -A /tmp | wc -l; test -e {tmp_path}/marker && echo host-tmp-visible || echo hidden"
    plain = ok(yurt_cmd("exec", busybox_rootfs, "sh", "-c", probe, env=_user_config(tmp_path, "")))
    assert plain.split()[-1] == "host-tmp-visible"
    env = _user_config(tmp_path, "contain = true\n")
    contained = ok(yurt_cmd("exec", busybox_rootfs, "sh", "-c", probe, env=env)).split()
    assert contained == ["0", "hidden"]
    assert ok(yurt_cmd("exec", "--contain=false", busybox_rootfs, "sh", "-c", probe, env=env)).split()[-1] == (
        "host-tmp-visible")
    assert ok(yurt_cmd("exec", busybox_rootfs, "sh", "-c", probe, env={**env, "YURT_CONTAIN": "0"})).split()[-1] == (
        "host-tmp-visible")


def test_user_config_cannot_set_policy(yurt_cmd, busybox_rootfs, tmp_path):
    env = _user_config(tmp_path, 'deny_binds = []\n')
    r = yurt_cmd("exec", busybox_rootfs, "true", env=env)
    assert r.returncode == 255
    assert "deny_binds is site policy" in r.stderr and "line 1" in r.stderr


def test_site_file_named_by_the_test_override_acts(yurt_cmd, busybox_rootfs, tmp_path):
    """Without /etc/yurt/yurt.toml, YURT_SITE_CONFIG names the site file (nothing to loosen)."""
    scratch, secret = tmp_path / "scratch", tmp_path / "secret"
    scratch.mkdir()
    secret.mkdir()
    (scratch / "hello").write_text("from the site bind\n")
    site = tmp_path / "site.toml"
    site.write_text(f'site_binds = ["{scratch}:/scratch:ro"]\ndeny_binds = ["{secret}"]\n')
    env = {**_user_config(tmp_path, ""), "YURT_SITE_CONFIG": str(site)}
    assert ok(yurt_cmd("exec", busybox_rootfs, "cat", "/scratch/hello", env=env)) == "from the site bind\n"
    r = yurt_cmd("exec", "-B", f"{secret}:/s", busybox_rootfs, "true", env=env)
    assert r.returncode == 255 and "the site denies binding" in r.stderr
