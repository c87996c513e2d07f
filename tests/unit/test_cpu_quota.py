"""mksquashfs threads follow the job's CPU allocation: cgroup CPU quotas (v1 and v2), Slurm, affinity."""

from __future__ import annotations

from pathlib import Path

from yurt.image import squashfs


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_v2_quota_of_an_ancestor_counts(tmp_path):
    root = tmp_path / "cg"
    _write(root / "cgroup.controllers", "cpu memory\n")
    _write(root / "job" / "cpu.max", "250000 100000\n")  # 2.5 CPUs -> 3 threads
    _write(root / "job" / "step" / "cpu.max", "max 100000\n")
    _write(tmp_path / "self", "0::/job/step\n")
    assert squashfs.cgroup_cpu_quota(str(tmp_path / "self"), str(root)) == 3


def test_v1_cpu_controller_quota(tmp_path):
    root = tmp_path / "cg"
    _write(root / "cpu,cpuacct" / "slurm" / "uid_1" / "cpu.cfs_quota_us", "100000\n")
    _write(root / "cpu,cpuacct" / "slurm" / "uid_1" / "cpu.cfs_period_us", "100000\n")
    _write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1\n")
    _write(root / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    _write(tmp_path / "self", "12:memory:/slurm/uid_1\n4:cpu,cpuacct:/slurm/uid_1\n0::/\n")
    assert squashfs.cgroup_cpu_quota(str(tmp_path / "self"), str(root)) == 1


def test_no_quota_anywhere(tmp_path):
    root = tmp_path / "cg"
    _write(root / "cgroup.controllers", "cpu\n")
    _write(root / "cpu.max", "max 100000\n")
    _write(tmp_path / "self", "0::/\n")
    assert squashfs.cgroup_cpu_quota(str(tmp_path / "self"), str(root)) is None
    assert squashfs.cgroup_cpu_quota(str(tmp_path / "missing"), str(root)) is None


def test_job_cpus_takes_the_smallest_limit(monkeypatch):
    monkeypatch.setattr(squashfs.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(squashfs, "cgroup_cpu_quota", lambda: None)
    monkeypatch.setenv("SLURM_CPUS_ON_NODE", "4")
    assert squashfs._job_cpus() == 4
    monkeypatch.setattr(squashfs, "cgroup_cpu_quota", lambda: 2)
    assert squashfs._job_cpus() == 2
    monkeypatch.delenv("SLURM_CPUS_ON_NODE")
    monkeypatch.setattr(squashfs, "cgroup_cpu_quota", lambda: None)
    assert squashfs._job_cpus() == 8
