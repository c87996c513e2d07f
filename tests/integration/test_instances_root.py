"""Instances and --sharens as root: kernel squashfs on a loop device, released when they end."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from installed_yurt import yurt_argv

pytestmark = [pytest.mark.root]


def _loop_devices_for(path) -> list[str]:
    out = subprocess.run(["losetup", "-j", str(path)], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def _wait_released(path, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while _loop_devices_for(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _loop_devices_for(path)


@pytest.mark.requires("losetup")
def test_root_instance_on_a_loop_device_is_released_on_stop(yurt_cmd, busybox_sif, tmp_path):
    env = {"YURT_RUNTIMEDIR": str(tmp_path / "run")}
    r = yurt_cmd("instance", "start", busybox_sif, "rootinst", env=env)
    assert r.returncode == 0, r.stderr
    try:
        assert len(_loop_devices_for(busybox_sif)) == 1
        r = yurt_cmd("exec", "instance://rootinst", "sh", "-c", "id -u; readlink /proc/1/ns/pid", env=env)
        assert r.returncode == 0, r.stderr
        uid, ns = r.stdout.split()
        assert uid == "0" and ns != os.readlink("/proc/self/ns/pid")
    finally:
        r = yurt_cmd("instance", "stop", "rootinst", env=env)
    assert r.returncode == 0, r.stderr
    assert _wait_released(busybox_sif) == []


@pytest.mark.requires("losetup")
def test_root_sharens_uses_one_mount_namespace_and_one_loop_device(busybox_sif, tmp_path):
    env = dict(os.environ, YURT_RUNTIMEDIR=str(tmp_path / "run"))
    cmd = [*yurt_argv(), "exec", "--sharens", "--sharens-tag", "root-step", busybox_sif, "sh", "-c",
           "readlink /proc/self/ns/mnt; sleep 1"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert len({out.strip() for out, _ in outs}) == 1
    assert _wait_released(busybox_sif) == []
