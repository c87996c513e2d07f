"""The pieces of joining that need no namespaces: state directory, targets, tags, instance names."""

from __future__ import annotations

import os

import pytest

from yurt.errors import RuntimeSetupError, UsageError
from yurt.runtime import instances, join


def test_state_dir_is_private_and_checked(tmp_path, monkeypatch, capsys):
    base = tmp_path / "rt"
    monkeypatch.setenv("YURT_RUNTIMEDIR", str(base))
    d = join.state_dir("sharens")
    assert d == str(base / "sharens")
    assert (base.stat().st_mode & 0o777) == 0o700 and (os.stat(d).st_mode & 0o777) == 0o700
    base.chmod(0o755)
    join.state_dir()
    assert (base.stat().st_mode & 0o777) == 0o700  # repaired
    assert capsys.readouterr().err == ""
    # a symbolic link (as another user could plant at /tmp/yurt-<uid>) is never followed: a private
    # sibling is used instead, with one notice, and found again by the next call
    link = tmp_path / "link"
    link.symlink_to(base)
    monkeypatch.setenv("YURT_RUNTIMEDIR", str(link))
    got = join.state_dir()
    assert os.path.dirname(got) == str(tmp_path) and os.path.basename(got).startswith("link-")
    assert not os.path.islink(got) and (os.lstat(got).st_mode & 0o777) == 0o700
    assert join.state_dir("sharens") == os.path.join(got, "sharens")
    err = capsys.readouterr().err
    assert err.count("yurt: notice:") == 1 and "symbolic link" in err and got in err
    # a missing parent is an error that says what to do
    monkeypatch.setenv("YURT_RUNTIMEDIR", str(tmp_path / "no" / "such"))
    with pytest.raises(RuntimeSetupError, match="YURT_RUNTIMEDIR"):
        join.state_dir()


def test_state_dir_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("YURT_RUNTIMEDIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert join.state_dir() == str(tmp_path / "yurt")


def test_target_identifies_a_live_process_and_survives_json():
    me = join.capture(os.getpid())
    assert join.alive(me)
    assert join.Target.from_json(me.to_json()) == me
    assert not join.alive(join.Target(me.pid, me.start + 1, me.ns))
    assert not join.alive(join.Target(me.pid, me.start, {**me.ns, "mnt": 1}))
    assert join.Target.from_json({"pid": "x"}) is None


def test_default_tag():
    assert join.default_tag({"SLURM_JOB_ID": "12", "SLURM_STEP_ID": "0"}) == "12.0"
    assert join.default_tag({"SLURM_JOB_ID": "12"}) == "12.batch"
    assert join.default_tag({"PMIX_NAMESPACE": "ns-1"}) == "ns-1"
    assert join.default_tag({}) is None


def test_tag_key_is_a_safe_file_name():
    for tag in ("12.0", "../../etc", "x" * 300, "a b/c"):
        key = join.tag_key(tag)
        assert "/" not in key and " " not in key and len(key) <= 100 and not key.startswith(".")
    assert join.tag_key("a/b") != join.tag_key("a_b")


def test_instance_names():
    assert instances.check_name("web-1.x") == "web-1.x"
    for bad in ("", "-x", ".x", "a/b", "a b", "é", "x" * 129):
        with pytest.raises(UsageError):
            instances.check_name(bad)


def test_instance_stop_signal_names_and_numbers():
    from yurt.cli.instance import _signal_number
    from yurt.errors import UsageError

    assert _signal_number("TERM") == 15 and _signal_number("sigkill") == 9 and _signal_number("2") == 2
    for bad in ("999", "0", "NOPE", ""):
        with pytest.raises(UsageError):
            _signal_number(bad)
