"""resolve_in_root: container paths never leave the container root."""

from __future__ import annotations

import os

import pytest

from yurt.runtime.paths import MAX_SYMLINKS, EscapeError, host_path, resolve_in_root, split


@pytest.fixture
def root(tmp_path):
    """A small hostile image tree next to a host tree it must never reach."""
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    (r / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (r / "usr" / "lib").mkdir(parents=True)
    (r / "usr" / "share").mkdir()
    (r / "home").mkdir()
    (r / "tmp").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("host secret\n")
    return r


def test_split_drops_empty_and_dot():
    assert split("//a/./b//c/") == ["a", "b", "c"]
    assert split("/") == []
    assert split("") == []
    assert split("a/../b") == ["a", "..", "b"]


def test_existing_path(root):
    assert resolve_in_root(str(root), "/etc/passwd") == ("/etc/passwd", [])
    assert resolve_in_root(str(root), "/usr/lib") == ("/usr/lib", [])


def test_root_itself(root):
    assert resolve_in_root(str(root), "/") == ("/", [])
    assert resolve_in_root(str(root), "") == ("/", [])
    assert resolve_in_root(str(root) + "/", "/etc") == ("/etc", [])


def test_redundant_slashes_and_dots(root):
    assert resolve_in_root(str(root), "//usr/./lib//") == ("/usr/lib", [])


def test_dotdot_inside_the_tree(root):
    assert resolve_in_root(str(root), "/usr/lib/../share") == ("/usr/share", [])


def test_dotdot_clamps_at_root(root):
    assert resolve_in_root(str(root), "/../../../../etc/passwd") == ("/etc/passwd", [])
    assert resolve_in_root(str(root), "/usr/../../..") == ("/", [])


def test_missing_tail_returned_as_components(root):
    assert resolve_in_root(str(root), "/usr/lib/a/b/c") == ("/usr/lib", ["a", "b", "c"])
    assert resolve_in_root(str(root), "/nope") == ("/", ["nope"])


def test_absolute_symlink_is_relative_to_root(root):
    os.symlink("/etc", root / "cfg")
    assert resolve_in_root(str(root), "/cfg/passwd") == ("/etc/passwd", [])


def test_absolute_symlink_to_slash_stays_in_root(root):
    os.symlink("/", root / "data")
    assert resolve_in_root(str(root), "/data") == ("/", [])
    assert resolve_in_root(str(root), "/data/data/data/etc") == ("/etc", [])


def test_relative_symlink(root):
    os.symlink("../share", root / "usr" / "lib" / "sh")
    assert resolve_in_root(str(root), "/usr/lib/sh") == ("/usr/share", [])


def test_relative_symlink_many_dotdots_clamps(root):
    os.symlink("../../../../../../../../home", root / "etc" / "localtime")
    assert resolve_in_root(str(root), "/etc/localtime") == ("/home", [])


def test_relative_symlink_escape_attempt_to_host_file(root, tmp_path):
    # ../outside/secret from root would be tmp_path/outside/secret on the host
    os.symlink("../../outside/secret", root / "etc" / "evil")
    existing, missing = resolve_in_root(str(root), "/etc/evil")
    assert (existing, missing) == ("/", ["outside", "secret"])
    assert not os.path.exists(host_path(str(root), "/outside"))


def test_absolute_symlink_to_host_path_does_not_escape(root, tmp_path):
    os.symlink(str(tmp_path / "outside" / "secret"), root / "etc" / "evil")
    existing, missing = resolve_in_root(str(root), "/etc/evil")
    # interpreted inside the root (which has /tmp and nothing deeper), where it does not exist
    wanted = split(str(tmp_path / "outside" / "secret"))
    if wanted[0] == "tmp":
        assert (existing, missing) == ("/tmp", wanted[1:])
    else:
        assert (existing, missing) == ("/", wanted)
    assert host_path(str(root), existing).startswith(str(root))


def test_symlink_chain(root):
    os.symlink("b", root / "a")
    os.symlink("/c", root / "b")
    os.symlink("usr/lib", root / "c")
    assert resolve_in_root(str(root), "/a") == ("/usr/lib", [])
    assert resolve_in_root(str(root), "/a/x") == ("/usr/lib", ["x"])


def test_symlink_in_middle_component(root):
    os.symlink("usr", root / "u")
    assert resolve_in_root(str(root), "/u/lib/../share") == ("/usr/share", [])


def test_final_component_symlink_is_followed(root):
    os.symlink("/usr/share", root / "home" / "link")
    assert resolve_in_root(str(root), "/home/link") == ("/usr/share", [])


def test_dangling_final_symlink_gives_missing_target(root):
    os.symlink("/srv/data", root / "dangling")
    assert resolve_in_root(str(root), "/dangling") == ("/", ["srv", "data"])
    assert resolve_in_root(str(root), "/dangling/more") == ("/", ["srv", "data", "more"])


def test_symlink_loop_is_eloop(root):
    os.symlink("b", root / "a")
    os.symlink("a", root / "b")
    with pytest.raises(EscapeError) as e:
        resolve_in_root(str(root), "/a")
    assert e.value.errno == 40


def test_self_loop_is_eloop(root):
    os.symlink("self", root / "self")
    with pytest.raises(EscapeError) as e:
        resolve_in_root(str(root), "/self/x")
    assert e.value.errno == 40


def test_symlink_limit(root):
    n = MAX_SYMLINKS
    for i in range(n):
        os.symlink(f"l{i + 1}", root / f"l{i}")
    os.symlink("etc", root / f"l{n}")
    # l0 -> ... -> l{n} -> etc: n + 1 links in all, one too many
    with pytest.raises(EscapeError) as e:
        resolve_in_root(str(root), "/l0")
    assert e.value.errno == 40
    # starting one later, exactly MAX_SYMLINKS links: allowed
    assert resolve_in_root(str(root), "/l1") == ("/etc", [])


def test_escape_error_is_oserror():
    assert issubclass(EscapeError, OSError)


def test_file_used_as_directory(root):
    with pytest.raises(EscapeError) as e:
        resolve_in_root(str(root), "/etc/passwd/x")
    assert e.value.errno == 20


def test_file_used_as_directory_then_dotdot(root):
    with pytest.raises(EscapeError):
        resolve_in_root(str(root), "/etc/passwd/../passwd")


def test_symlink_to_file_used_as_directory(root):
    os.symlink("/etc/passwd", root / "pw")
    with pytest.raises(EscapeError) as e:
        resolve_in_root(str(root), "/pw/x")
    assert e.value.errno == 20


def test_result_has_no_symlinks_and_stays_inside(root):
    os.symlink("../../..", root / "usr" / "lib" / "up")
    os.symlink("/usr/lib/up/etc", root / "e")
    existing, missing = resolve_in_root(str(root), "/e/passwd")
    assert (existing, missing) == ("/etc/passwd", [])
    host = host_path(str(root), existing)
    assert os.path.realpath(host) == host
    assert host.startswith(str(root) + os.sep)


def test_missing_tail_never_climbs_out(root):
    os.symlink("nope/../../../../outside", root / "data")
    existing, missing = resolve_in_root(str(root), "/data/x")
    assert ".." not in missing
    joined = os.path.normpath(os.path.join(host_path(str(root), existing), *missing))
    assert joined.startswith(str(root) + os.sep)


def test_host_path(root):
    assert host_path(str(root), "/") == str(root)
    assert host_path(str(root), "/etc/passwd") == os.path.join(str(root), "etc", "passwd")

