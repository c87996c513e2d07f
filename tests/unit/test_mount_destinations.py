"""mounts.check_destination: an image's symlinks cannot redirect kernel file systems or lead mounts onto them.

The check runs on what resolve_in_root found in the new root, so these tests build the hostile
trees and resolve in them exactly as the mount executor does (no privileges needed).
"""

from __future__ import annotations

import os

import pytest

from yurt.errors import RuntimeSetupError
from yurt.runtime.mounts import check_destination
from yurt.runtime.paths import resolve_in_root
from yurt.spec import Mount


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    for d in ("proc", "sys", "dev", "tmp", "var/tmp", "usr/lib64", "etc", "home/u"):
        (r / d).mkdir(parents=True)
    return r


def verdict(root, m: Mount) -> bool:
    existing, missing = resolve_in_root(str(root), m.destination)
    return check_destination(m, existing, missing)


def relink(root, path: str, target: str) -> None:
    full = root / path.lstrip("/")
    if full.is_symlink():
        full.unlink()
    elif full.is_dir():
        full.rmdir()
    os.symlink(target, full)


DEFAULTS = [Mount("/proc", "bind", "/proc"), Mount("/proc", "proc"), Mount("/sys", "bind", "/sys"),
            Mount("/sys", "sysfs"), Mount("/dev", "bind", "/dev", ["dev"]), Mount("/dev", "devdir"),
            Mount("/tmp", "bind", "/tmp"), Mount("/tmp", "tmpfs", None, ["mode=1777"]),
            Mount("/var/tmp", "bind", "/var/tmp"), Mount("/etc/passwd", "passwd"), Mount("/home/u", "bind", "/home/u")]


def test_a_plain_image_passes(root):
    assert all(verdict(root, m) for m in DEFAULTS)


def test_ordinary_links_stay_followed(root):
    relink(root, "/lib64", "usr/lib64")
    relink(root, "/etc/localtime", "/usr/share/zoneinfo/UTC")
    assert verdict(root, Mount("/lib64/libcuda.so", "bind", "/x"))
    assert verdict(root, Mount("/etc/localtime", "bind", "/etc/localtime"))


@pytest.mark.parametrize("name", ["/proc", "/sys", "/dev", "/tmp"])
@pytest.mark.parametrize("target", ["/elsewhere", "/usr", "../../../../usr", "/tmp"])
def test_symlinked_kernel_and_tmp_directories_are_refused(root, name, target):
    if target == name:
        target = "/usr"
    relink(root, name, target)
    for m in DEFAULTS:
        if m.destination == name:
            with pytest.raises(RuntimeSetupError, match=f"the image's {name} is a symbolic link"):
                verdict(root, m)


def test_kernel_file_systems_never_go_through_a_link_anywhere(root):
    relink(root, "/dev", "/devices")
    (root / "devices" / "pts").mkdir(parents=True)
    with pytest.raises(RuntimeSetupError, match="devpts file system"):
        verdict(root, Mount("/dev/pts", "devpts"))


def test_var_tmp_linked_into_tmp_is_left_to_the_image(root):
    relink(root, "/var/tmp", "/tmp")
    assert verdict(root, Mount("/var/tmp", "bind", "/var/tmp")) is False
    relink(root, "/var/tmp", "../tmp/sub")  # dangling, still inside /tmp
    assert verdict(root, Mount("/var/tmp", "tmpfs", None, ["mode=1777"])) is False


def test_var_tmp_linked_elsewhere_in_the_image_is_followed(root):
    relink(root, "/var/tmp", "/scratch")
    assert verdict(root, Mount("/var/tmp", "bind", "/var/tmp")) is True


@pytest.mark.parametrize("target", ["/proc/self/attr/current", "/proc", "/sys/kernel", "/sys", "/dev", "/",
                                    "../proc/sys/kernel/core_pattern"])
def test_links_leading_mounts_onto_kernel_files_are_refused(root, target):
    relink(root, "/data", target)
    relink(root, "/etc/localtime", target)
    for m in (Mount("/data", "bind", "/host"), Mount("/etc/localtime", "bind", "/etc/localtime", ["ro"]),
              Mount("/data", "file", content=b"x"), Mount("/data", "tmpfs")):
        with pytest.raises(RuntimeSetupError, match="refusing to mount over the kernel's files"):
            verdict(root, m)


def test_planned_mounts_below_proc_without_links_are_left_alone(root):
    (root / "proc" / "driver" / "nvidia").mkdir(parents=True)  # e.g. a CDI spec's mount
    assert verdict(root, Mount("/proc/driver/nvidia", "tmpfs"))
    assert verdict(root, Mount("/dev/shm", "bind", "/dev/shm"))
