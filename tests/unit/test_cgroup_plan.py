"""Resource-limit planning: flag parsing, the files written per cgroup version, and where the
container's cgroup goes (checked against directory trees shaped like cgroupfs)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from yurt.errors import UsageError
from yurt.runtime import cgroups
from yurt.spec import ContainerSpec, Process, Resources

HYBRID_MOUNTINFO = """\
25 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
28 25 0:25 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
29 25 0:26 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
30 25 0:27 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd
31 25 0:28 /sub /mnt/bound rw - cgroup cgroup rw,cpuset
"""
HYBRID_PROC = """\
9:name=systemd:/user.slice
8:pids:/user.slice/job
4:memory:/jobs/42
1:cpu,cpuacct:/
0::/user.slice
"""


def test_memory_sizes():
    assert cgroups.parse_memory("64M") == 64 << 20
    assert cgroups.parse_memory("2g") == 2 << 30
    assert cgroups.parse_memory("1.5GiB") == 3 << 29
    assert cgroups.parse_memory("512mb") == 512 << 20
    assert cgroups.parse_memory("1048576") == 1 << 20
    for bad in ("lots", "12Q", "", "1k", "inf", "nan", "1e400", "-inf"):
        with pytest.raises(UsageError):
            cgroups.parse_memory(bad)


def test_cpus_cpuset_pids():
    assert cgroups.parse_cpus("1.5") == 1.5
    for bad in ("0", "-1", "many"):
        with pytest.raises(UsageError):
            cgroups.parse_cpus(bad)
    assert cgroups.parse_cpuset("0-3,6") == "0-3,6"
    for bad in ("3-1", "a", "1,,2", "-1"):
        with pytest.raises(UsageError):
            cgroups.parse_cpuset(bad)
    with pytest.raises(UsageError):
        cgroups.resources_from_flags(None, None, 0, None)
    assert cgroups.resources_from_flags(None, None, None, None) is None
    assert cgroups.resources_from_flags("1G", "2", 10, "1") == Resources(1 << 30, 2.0, 10, "1")


def test_limit_files_per_version():
    res = Resources(memory=64 << 20, cpus=0.5, pids=20, cpuset="0-1")
    v1 = cgroups.limit_files(1, res)
    assert v1["memory"] == [("memory.limit_in_bytes", str(64 << 20)), ("?memory.memsw.limit_in_bytes", str(64 << 20))]
    assert v1["cpu"] == [("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", "50000")]
    assert v1["pids"] == [("pids.max", "20")]
    assert v1["cpuset"] == [("cpuset.cpus", "0-1"), ("cpuset.mems", "")]
    v2 = cgroups.limit_files(2, res)
    assert v2["memory"] == [("memory.max", str(64 << 20)), ("?memory.swap.max", "0")]
    assert v2["cpu"] == [("cpu.max", "50000 100000")]
    assert v2["cpuset"] == [("cpuset.cpus", "0-1")]


def test_layout_parsing():
    mounts = cgroups.parse_cgroup_mounts(HYBRID_MOUNTINFO)
    assert mounts == {"": "/sys/fs/cgroup/unified", "memory": "/sys/fs/cgroup/memory",
                      "cpu": "/sys/fs/cgroup/cpu,cpuacct", "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
                      "pids": "/sys/fs/cgroup/pids"}  # the bind of a sub-cgroup (cpuset) is not a hierarchy root
    member = cgroups.parse_proc_cgroup(HYBRID_PROC)
    assert member == {"pids": "/user.slice/job", "memory": "/jobs/42", "cpu": "/", "cpuacct": "/", "": "/user.slice"}


def _cg(path: Path, procs: str = "", controllers: str | None = None, enabled: str | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "cgroup.procs").write_text(procs)
    if controllers is not None:
        (path / "cgroup.controllers").write_text(controllers)
        (path / "cgroup.subtree_control").write_text(enabled or "")
    return path


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anything: permissions cannot be tested")
def test_v1_parent_is_the_deepest_writable_ancestor(tmp_path):
    mount = tmp_path / "memory"
    _cg(mount)
    deleg = _cg(mount / "jobs" / "42")
    _cg(deleg / "task_0")
    (mount / "jobs").chmod(0o555)
    (mount / "cgroup.procs").chmod(0o444)
    try:
        assert cgroups.find_v1_parent(str(mount), "/jobs/42/task_0") == str(deleg / "task_0")
        (deleg / "task_0").chmod(0o555)
        assert cgroups.find_v1_parent(str(mount), "/jobs/42/task_0") == str(deleg)
        deleg.chmod(0o555)
        assert cgroups.find_v1_parent(str(mount), "/jobs/42/task_0") is None
    finally:
        for p in (deleg / "task_0", deleg, mount / "jobs"):
            p.chmod(0o755)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anything: permissions cannot be tested")
def test_v2_parent_needs_enabled_controllers_or_no_processes(tmp_path):
    root = _cg(tmp_path / "v2", "1\n", "memory pids cpu", "memory pids cpu")
    svc = _cg(root / "user@1000.service", "", "memory pids cpu", "memory pids")
    scope = _cg(svc / "app.slice" / "run-1.scope", "4242\n", "memory pids", "")
    _cg(svc / "app.slice", "", "memory pids", "memory pids")
    root.chmod(0o555)  # the machine's root cgroup is not the user's
    try:
        # the scope holds us: the nearest ancestor with the controllers enabled below it
        parent, enable, _ = cgroups.find_v2_parent(str(root), "/user@1000.service/app.slice/run-1.scope",
                                                   ["memory", "pids"])
        assert (parent, enable) == (str(svc / "app.slice"), [])
        # cpu is enabled nowhere below app.slice but app.slice holds no process: enable it there
        (svc / "app.slice" / "cgroup.controllers").write_text("memory pids cpu")
        parent, enable, _ = cgroups.find_v2_parent(str(root), "/user@1000.service/app.slice/run-1.scope", ["cpu"])
        assert (parent, enable) == (str(svc / "app.slice"), ["cpu"])
        # a parent holding processes cannot get controllers enabled
        (svc / "app.slice" / "cgroup.procs").write_text("77\n")
        (svc / "cgroup.subtree_control").write_text("memory")
        parent, _, why = cgroups.find_v2_parent(str(root), "/user@1000.service/app.slice/run-1.scope", ["cpu"])
        assert parent == str(svc) and _ == ["cpu"]
        scope.chmod(0o555)
        svc.chmod(0o555)
        (svc / "app.slice").chmod(0o555)
        parent, _, why = cgroups.find_v2_parent(str(root), "/user@1000.service/app.slice/run-1.scope", ["memory"])
        assert parent is None and why
    finally:
        for p in (root, root / "user@1000.service", root / "user@1000.service" / "app.slice",
                  root / "user@1000.service" / "app.slice" / "run-1.scope"):
            if p.exists():
                p.chmod(0o755)


def test_plan_reports_every_limit_it_cannot_apply(tmp_path):
    mountinfo = f"27 25 0:24 / {tmp_path}/memory rw - cgroup cgroup rw,memory\n"
    mem = _cg(tmp_path / "memory")
    _cg(mem / "me")
    groups, problems = cgroups.plan_groups(Resources(memory=1 << 30, pids=5), proc_cgroup="4:memory:/me\n",
                                           mountinfo=mountinfo)
    assert len(groups) == 1 and groups[0].parent == str(mem / "me") and groups[0].version == 1
    assert groups[0].controllers == ["memory"]
    assert groups[0].files[0] == ("memory.limit_in_bytes", str(1 << 30))
    assert len(problems) == 1 and problems[0].startswith("--pids-limit") and "not available" in problems[0]


def test_apply_fails_loudly_or_warns_with_allow_no_limits(tmp_path, monkeypatch, capsys):
    def fake_plan(res):
        return [], ["--pids-limit: no writable cgroup"]

    monkeypatch.setattr(cgroups, "plan_groups", fake_plan)
    spec = ContainerSpec(process=Process(args=["true"]), resources=Resources(pids=5))
    with pytest.raises(cgroups.CgroupError, match="cannot apply resource limits: --pids-limit"):
        cgroups.apply(spec)
    spec.extras.allow_no_limits = True
    assert cgroups.apply(spec) is None
    assert "limit NOT applied" in capsys.readouterr().err


def test_resources_round_trip_through_oci():
    res = Resources(memory=1 << 30, cpus=1.5, pids=100, cpuset="0-3")
    spec = ContainerSpec(process=Process(args=["x"]), resources=res)
    doc = spec.to_oci()
    assert doc["linux"]["resources"] == {"memory": {"limit": 1 << 30, "swap": 1 << 30},
                                         "cpu": {"quota": 150000, "period": 100000, "cpus": "0-3"},
                                         "pids": {"limit": 100}}
    assert ContainerSpec.from_oci(doc).resources == res
    assert "resources" not in ContainerSpec(process=Process(args=["x"])).to_oci()["linux"]
