"""yurt.programs: the one lookup of the programs yurt runs, PATH without a site policy, only root-owned
``helper_path`` directories under one; and what "a site policy is in force" means (yurt.config)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from yurt import config, programs
from yurt.errors import ImageError

LOAD = config.load


@pytest.fixture
def site(tmp_path, monkeypatch):
    """``write(text)`` makes the site file (through YURT_SITE_CONFIG) that yurt.config.load reads."""
    monkeypatch.setattr(config, "SITE_CONFIG", str(tmp_path / "etc" / "yurt.toml"))  # no real site file
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    path = tmp_path / "site.toml"
    monkeypatch.setenv("YURT_SITE_CONFIG", str(path))
    programs._found.clear()

    def write(text: str) -> Path:
        path.write_text(text)
        return path

    yield write
    programs._found.clear()


def fake_tool(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tool = directory / name
    tool.write_text("#!/bin/sh\necho fake\n")
    tool.chmod(0o755)
    return tool


@pytest.mark.parametrize("text, policy", [
    (None, False),
    ("contain = true\nsquashfs_threads = 2\n", False),  # settings, no policy key
    ("deny_binds = []\n", True),  # any site-only key, even an empty one
    ('helper_path = ["/usr/bin"]\n', True),
    ("require_signed_images = false\n", True),
])
def test_a_policy_is_in_force_when_the_site_file_sets_a_policy_key(site, text, policy):
    if text is not None:
        site(text)
    cfg = config.load()
    assert cfg.policy is policy and programs.policy_in_force() is policy


def test_user_file_cannot_set_helper_path(site, tmp_path):
    user = tmp_path / "home" / ".config" / "yurt" / "config.toml"
    user.parent.mkdir(parents=True)
    user.write_text(f'helper_path = ["{tmp_path}"]\n')
    with pytest.raises(config.ConfigError, match="helper_path is site policy"):
        config.load()


def test_without_policy_the_path_is_searched_as_a_shell_would(site, tmp_path, monkeypatch):
    mine = fake_tool(tmp_path / "bin", "unsquashfs")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    assert programs.find("unsquashfs") == str(mine)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert programs.find("unsquashfs") is None  # a changed PATH is looked at again
    with pytest.raises(ImageError, match="unsquashfs not found in PATH"):
        programs.require("unsquashfs", "install squashfs-tools", ImageError)
    assert programs.helper_env() is None  # helpers inherit our environment


@pytest.mark.skipif(not shutil.which("unsquashfs", path="/usr/bin"), reason="needs /usr/bin/unsquashfs")
def test_under_policy_a_planted_helper_on_path_is_ignored(site, tmp_path, monkeypatch):
    fake_tool(tmp_path / "bin", "unsquashfs")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    site("deny_binds = []\n")
    assert programs.find("unsquashfs") == "/usr/bin/unsquashfs"


def test_under_policy_only_root_owned_unwritable_directories_count(site, tmp_path, monkeypatch):
    # tmp_path is ours (or, as root, below the world-writable /tmp): never trusted
    fake_tool(tmp_path / "helpers", "squashfuse_ll")
    site(f'helper_path = ["{tmp_path / "helpers"}"]\n')
    assert programs.find("squashfuse_ll") is None
    with pytest.raises(ImageError) as e:
        programs.require("squashfuse_ll", None, ImageError)
    assert "site's helper directories" in str(e.value) and str(tmp_path / "helpers") in str(e.value)
    assert "helper_path" in str(e.value)
    # /tmp itself is root's but world-writable
    assert not programs.trusted_dir("/tmp") and not programs.trusted_dir(str(tmp_path))
    assert programs.trusted_dir("/usr/bin") or os.stat("/usr/bin").st_uid != 0


def test_under_policy_a_symlink_into_an_untrusted_place_does_not_count(site, tmp_path):
    """A root-owned directory is not enough: the program, links resolved, must be in one too."""
    target = fake_tool(tmp_path / "real", "tool")
    assert programs._trusted_program(str(target)) is False
    if os.geteuid() != 0:
        return  # only root can make a root-owned helper directory
    import tempfile

    helpers = Path(tempfile.mkdtemp(prefix="yurt-test-helpers-", dir="/var/lib"))  # root's, 0700
    try:
        (helpers / "tool").symlink_to(target)
        shutil.copy("/bin/true", helpers / "real-tool")
        site(f'helper_path = ["{helpers}"]\n')
        assert programs.find("tool") is None
        assert programs.find("real-tool") == str(helpers / "real-tool")
        (helpers / "real-tool").chmod(0o775)  # group-writable: no longer trusted
        programs._found.clear()
        assert programs.find("real-tool") is None
    finally:
        shutil.rmtree(helpers)


def test_under_policy_helpers_lose_ld_variables(site, monkeypatch):
    site('helper_path = ["/usr/sbin", "/usr/bin"]\n')
    monkeypatch.setenv("LD_PRELOAD", "/tmp/evil.so")
    monkeypatch.setenv("LD_LIBRARY_PATH", "/tmp")
    monkeypatch.setenv("KEEP_ME", "1")
    env = programs.helper_env()
    assert env is not None and "LD_PRELOAD" not in env and "LD_LIBRARY_PATH" not in env
    assert env["KEEP_ME"] == "1" and env["PATH"] == "/usr/sbin:/usr/bin"


def test_config_show_says_whether_a_policy_is_in_force(site, capsys):
    from yurt.cli import config as show

    site("contain = true\n")
    show.main("config", ["show"], None)
    assert "# site policy: none" in capsys.readouterr().out
    site("deny_binds = []\n")
    show.main("config", ["show"], None)
    out = capsys.readouterr().out
    assert "# site policy: in force" in out and "helper_path = [" in out


def test_gpu_integration_binds_are_checked_against_deny_binds(tmp_path, monkeypatch):
    """--nv finds files through the user's PATH and YURT_DRIVER_ROOT: a link there into a denied path is refused."""
    monkeypatch.setattr(config, "SITE_CONFIG", str(tmp_path / "etc" / "yurt.toml"))  # no real site file
    from test_gpu import make_driver_tree, spec_with_dev

    from yurt.errors import PolicyError
    from yurt.runtime.hooks import integrate

    root = make_driver_tree(tmp_path / "drv")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key").write_text("x")
    (secret / "key").chmod(0o755)
    smi = root / "usr/bin/nvidia-smi"
    smi.unlink()
    smi.symlink_to(secret / "key")
    env = {"YURT_DRIVER_ROOT": str(root), "PATH": "", "YURT_SYSCONFDIR": str(tmp_path / "etc"),
           "HOME": str(tmp_path)}
    site = tmp_path / "site.toml"
    site.write_text(f'deny_binds = ["{secret}"]\n')
    cfg = config.load({**env, "YURT_SITE_CONFIG": str(site)})
    integrate(spec_with_dev(contain=False), nv=True, env=env)  # no site: bound as before
    with pytest.raises(PolicyError, match="nvidia integration bind"):
        integrate(spec_with_dev(contain=False), nv=True, env=env, site=cfg)
    site.write_text(f'deny_binds = ["{tmp_path / "elsewhere"}"]\n')
    integrate(spec_with_dev(contain=False), nv=True, env=env, site=config.load({**env, "YURT_SITE_CONFIG": str(site)}))
