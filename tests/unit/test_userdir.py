"""Per-user directories in shared places and lock files: what another user planted is neither followed nor
waited on (yurt.store.userdir, yurt.store.locks).  A directory *owned by another user* needs two users:
tests/integration/test_policy_attacks.py plants that one as root."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from yurt.store import userdir
from yurt.store.locks import acquire


@pytest.fixture(autouse=True)
def _fresh():
    userdir._resolved.clear()
    yield
    userdir._resolved.clear()


def test_missing_directory_is_made_private(tmp_path, capsys):
    path = tmp_path / "yurt-1"
    assert userdir.own_dir(str(path), "hint") == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    path.chmod(0o777)
    assert userdir.own_dir(str(path), "hint") == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o700  # ours: closed again
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("plant", ["symlink", "file", "fifo", "dangling"])
def test_planted_path_gives_a_private_fallback_with_one_notice(tmp_path, capsys, plant):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    path = tmp_path / "yurt-1"
    if plant == "symlink":
        path.symlink_to(theirs)
    elif plant == "dangling":
        path.symlink_to(tmp_path / "nothing")
    elif plant == "file":
        path.write_text("")
    else:
        os.mkfifo(path)
    got = userdir.own_dir(str(path), "hint")
    assert got != str(path) and os.path.dirname(got) == str(tmp_path)
    assert os.path.basename(got).startswith("yurt-1-")
    st = os.lstat(got)
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == 0o700
    assert list(theirs.iterdir()) == [] and not (tmp_path / "nothing").exists()
    # the same process asks again: same answer, no second notice
    assert userdir.own_dir(str(path), "hint") == got
    err = capsys.readouterr().err
    assert err.count("yurt: notice:") == 1 and str(path) in err and got in err
    # another process (fresh state) converges on the same fallback, and peek finds it without making one
    userdir._resolved.clear()
    assert userdir.peek(str(path)) == got
    assert userdir.own_dir(str(path), "hint") == got
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("yurt-1-")) == [os.path.basename(got)]


def test_fallbacks_that_are_not_ours_are_skipped(tmp_path):
    path = tmp_path / "yurt-1"
    path.symlink_to("/")
    decoy = tmp_path / ("yurt-1-" + "0" * 12)  # sorts first, but is a link (as another user could plant)
    decoy.symlink_to(tmp_path)
    got = userdir.own_dir(str(path), "hint")
    assert got != str(decoy) and not os.path.islink(got)


def test_a_parent_that_does_not_exist_is_an_error_with_the_hint(tmp_path):
    from yurt.errors import RuntimeSetupError

    with pytest.raises(RuntimeSetupError, match="set THIS"):
        userdir.own_dir(str(tmp_path / "no" / "dir"), "set THIS")


def test_local_cache_dir_goes_through_the_check(tmp_path, monkeypatch):
    planted = tmp_path / "yurt-local"
    planted.symlink_to(tmp_path)
    monkeypatch.setenv("YURT_LOCAL_CACHEDIR", str(planted))
    got = userdir.local_cache_dir()
    assert got.startswith(str(planted) + "-") and not os.path.islink(got)


def test_store_uses_the_fallback_of_a_planted_local_directory(tmp_path):
    from yurt.store.cache import Store

    planted = tmp_path / "local"
    planted.symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").mkdir()
    store = Store(tmp_path / "cache", planted)
    with store.unpacked_lock("0123456789abcdef0123456789abcdef"):
        pass
    assert list((tmp_path / "elsewhere").iterdir()) == []
    assert str(store.local_root).startswith(str(planted) + "-")
    assert (store.local_root / "locks").is_dir()
    again = Store(tmp_path / "cache", planted)  # a later process sees the same place (for `cache list`)
    assert again.local_root == store.local_root


@pytest.mark.parametrize("plant", ["fifo", "symlink", "directory"])
def test_a_planted_lock_file_neither_blocks_nor_redirects(tmp_path, plant):
    lock = tmp_path / "x.lock"
    target = tmp_path / "target"
    target.write_text("keep")
    if plant == "fifo":
        os.mkfifo(lock)
    elif plant == "symlink":
        lock.symlink_to(target)
    else:
        lock.mkdir()
    done: list[int] = []
    worker = threading.Thread(target=lambda: done.append(acquire(lock, timeout=5)), daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive() and done, "acquire blocked"
    os.close(done[0])
    assert stat.S_ISREG(os.lstat(lock).st_mode) and target.read_text() == "keep"
