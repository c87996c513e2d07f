"""yurt.image.inroot: an image's metadata files are read inside it, never through a link, regular files only.

Every case runs twice: with openat2 (this kernel has it) and with the O_NOFOLLOW walk that older
kernels get, which must give the same answers.
"""

from __future__ import annotations

import os
import threading

import pytest

from yurt.errors import ImageError
from yurt.image import inroot
from yurt.runtime.paths import resolve_in_root


@pytest.fixture(params=["openat2", "walk"])
def mode(request, monkeypatch):
    if request.param == "openat2":
        from yurt import syscalls as sc

        try:
            os.close(sc.openat2(-100, "/", os.O_PATH | os.O_CLOEXEC, sc.RESOLVE_IN_ROOT))
        except OSError:
            pytest.skip("this kernel has no openat2")
        monkeypatch.setattr(inroot, "_openat2_usable", True)
    else:
        monkeypatch.setattr(inroot, "_openat2_usable", False)
    yield request.param
    assert inroot._openat2_usable == (request.param == "openat2")  # openat2 was used, not given up on


@pytest.fixture
def tree(tmp_path):
    """An image root with a metadata directory, and a host secret next to it."""
    root = tmp_path / "root"
    meta = root / ".singularity.d"
    (meta / "env").mkdir(parents=True)
    (meta / "labels.json").write_text('{"a": "b"}\n')
    (meta / "env" / "10-a.sh").write_text("export A=1\n")
    (meta / "env" / "20-b.sh").write_text("export B=2\n")
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (tmp_path / "secret").write_text("TOP SECRET\n")
    return root


def test_regular_file(tree, mode):
    assert inroot.read_file(str(tree), "/.singularity.d/labels.json") == b'{"a": "b"}\n'
    assert inroot.read_file(str(tree), ".singularity.d//./labels.json") == b'{"a": "b"}\n'


def test_root_given_as_an_fd(tree, mode):
    fd = os.open(tree, os.O_PATH | os.O_DIRECTORY)
    try:
        assert inroot.read_file(fd, "/etc/passwd").startswith(b"root:")
        assert inroot.read_file(fd, "/etc/passwd") is not None  # the caller's fd is left open
    finally:
        os.close(fd)


def test_missing_file_parent_or_root_is_none(tree, mode):
    assert inroot.read_file(str(tree), "/.singularity.d/runscript") is None
    assert inroot.read_file(str(tree), "/nope/labels.json") is None
    assert inroot.read_file(str(tree), "/etc/passwd/x") is None  # a file used as a directory
    assert inroot.read_file(str(tree / "gone"), "/etc/passwd") is None
    assert inroot.list_dir(str(tree), "/.singularity.d/nope") is None


def test_dotdot_stays_in_the_root(tree, mode):
    assert inroot.read_file(str(tree), "/../../../etc/passwd").startswith(b"root:")
    assert inroot.read_file(str(tree), "/.singularity.d/../../secret") is None


@pytest.mark.parametrize("link_at", [".singularity.d", ".singularity.d/env", ".singularity.d/env/10-a.sh"])
def test_symlink_at_each_component_is_refused(tree, tmp_path, mode, link_at):
    target = tree / link_at
    moved = tmp_path / "moved"
    os.rename(target, moved)
    os.symlink(moved, target)  # an absolute host path: the escape a plain open() would take
    with pytest.raises(inroot.UnsafeFile, match=f"/{link_at} is a symbolic link"):
        inroot.read_file(str(tree), "/.singularity.d/env/10-a.sh", where="IMG")


def test_symlinks_inside_the_root_are_not_followed_either(tree, mode):
    os.symlink("labels.json", tree / ".singularity.d" / "runscript")
    with pytest.raises(inroot.UnsafeFile, match="runscript is a symbolic link"):
        inroot.read_file(str(tree), "/.singularity.d/runscript")


def test_symlink_to_host_secret_never_read(tree, tmp_path, mode):
    os.unlink(tree / ".singularity.d" / "labels.json")
    os.symlink(tmp_path / "secret", tree / ".singularity.d" / "labels.json")
    with pytest.raises(inroot.UnsafeFile) as info:
        inroot.read_file(str(tree), "/.singularity.d/labels.json", where="IMG")
    assert "TOP SECRET" not in str(info.value)
    assert str(info.value).startswith("IMG: /.singularity.d/labels.json is a symbolic link")


def test_dangling_symlink_is_refused_not_absent(tree, mode):
    os.symlink("/does/not/exist", tree / ".singularity.d" / "runscript")
    with pytest.raises(inroot.UnsafeFile, match="symbolic link"):
        inroot.read_file(str(tree), "/.singularity.d/runscript")


def test_fifo_does_not_block(tree, mode):
    os.mkfifo(tree / ".singularity.d" / "env" / "50-fifo.sh")
    result: list = []

    def read() -> None:
        try:
            inroot.read_file(str(tree), "/.singularity.d/env/50-fifo.sh")
        except ImageError as e:
            result.append(e)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "reading a FIFO blocked"
    assert result and "is a FIFO, not a regular file" in str(result[0])


def test_device_node_is_refused_without_opening_it(tree, mode):
    os.symlink("/dev/null", tree / "devlink")  # a link to one: refused as a link
    with pytest.raises(inroot.UnsafeFile, match="symbolic link"):
        inroot.read_file(str(tree), "/devlink")
    # the node itself, as a root-made image has it: /dev of the host stands in for the image root
    with pytest.raises(inroot.UnsafeFile, match="/null is a character device, not a regular file"):
        inroot.read_file("/dev", "/null")


def test_directory_instead_of_file(tree, mode):
    with pytest.raises(inroot.UnsafeFile, match="/.singularity.d/env is a directory, not a regular file"):
        inroot.read_file(str(tree), "/.singularity.d/env")


def test_oversize_is_refused_without_reading(tree, mode):
    big = tree / ".singularity.d" / "oci-config.json"
    with open(big, "wb") as f:
        f.truncate(100 << 20)  # sparse: 100 MB that would take memory to read
    with pytest.raises(inroot.UnsafeFile, match="104857600 bytes, over the 1048576-byte limit"):
        inroot.read_file(str(tree), "/.singularity.d/oci-config.json")
    assert inroot.read_file(str(tree), "/.singularity.d/labels.json", limit=11) == b'{"a": "b"}\n'
    with pytest.raises(inroot.UnsafeFile, match="over the 10-byte limit"):
        inroot.read_file(str(tree), "/.singularity.d/labels.json", limit=10)


def test_list_dir(tree, tmp_path, mode):
    assert inroot.list_dir(str(tree), "/.singularity.d/env") == ["10-a.sh", "20-b.sh"]
    with pytest.raises(inroot.UnsafeFile, match="is a regular file, not a directory"):
        inroot.list_dir(str(tree), "/etc/passwd")
    os.symlink(tmp_path, tree / "hostdir")
    with pytest.raises(inroot.UnsafeFile, match="symbolic link"):
        inroot.list_dir(str(tree), "/hostdir")


def test_unreadable_file_is_an_image_error(tree, mode):
    if os.geteuid() == 0:
        pytest.skip("root reads anything")
    os.chmod(tree / "etc" / "passwd", 0)
    with pytest.raises(ImageError, match="/etc/passwd: cannot open: Permission denied"):
        inroot.read_file(str(tree), "/etc/passwd")


def test_resolve_then_read_follows_links_inside_the_root_only(tree, tmp_path, mode):
    """How /etc/passwd is read for the generated one: links within the image followed, then no link at all."""
    os.symlink("/../../../etc/passwd", tree / "pw")  # climbs out only lexically: stays in the root
    existing, missing = resolve_in_root(str(tree), "/pw")
    assert (existing, missing) == ("/etc/passwd", [])
    assert inroot.read_file(str(tree), existing).startswith(b"root:")
    os.symlink(tmp_path / "secret", tree / "evil")
    existing, missing = resolve_in_root(str(tree), "/evil")
    assert missing  # the host path does not exist inside the root: nothing to read


@pytest.mark.parametrize("errno_value", [38, 1])  # ENOSYS (kernel < 5.6), EPERM (a seccomp filter)
def test_openat2_refused_falls_back_to_the_walk_for_good(tree, monkeypatch, errno_value):
    from yurt import syscalls as sc

    calls = []

    def refused(*args):
        calls.append(args)
        raise OSError(errno_value, "refused")

    monkeypatch.setattr(inroot, "_openat2_usable", True)
    monkeypatch.setattr(sc, "openat2", refused)
    assert inroot.read_file(str(tree), "/etc/passwd").startswith(b"root:")
    assert inroot.read_file(str(tree), "/.singularity.d/labels.json") == b'{"a": "b"}\n'
    assert len(calls) == 1 and inroot._openat2_usable is False
