"""``--memory``, ``--pids-limit``, ``--cpus``, ``--cpuset``: real cgroups, real kernel enforcement.

* As root (cgroup v1 or v2): a memory hog is killed at the limit, a (bounded) fork bomb stops at
  the pid limit, and the container's cgroups are gone afterwards.
* As the test user in a subtree the root test delegates (``chown``), as a site or systemd would.
* As a user with no delegation: a clear error, or a warning with ``--allow-no-limits``; when the
  user happens to have a delegated cgroup, the limits must work instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from cprogs import add_programs

from yurt.runtime import cgroups
from yurt.spec import Resources

HOG_MIB = "400"  # allocated by the hog; far above every limit below, harmless without one


def _layout() -> tuple[dict[str, str], dict[str, str]]:
    with open("/proc/self/cgroup") as f:
        membership = cgroups.parse_proc_cgroup(f.read())
    with open("/proc/self/mountinfo") as f:
        mounts = cgroups.parse_cgroup_mounts(f.read())
    return membership, mounts


def _yurt_cgroups() -> set[str]:
    """Every ``yurt-*`` cgroup on the machine, in every hierarchy."""
    found = set()
    for mount in set(_layout()[1].values()):
        for top, dirs, _ in os.walk(mount):
            found.update(os.path.join(top, d) for d in dirs if d.startswith("yurt-"))
    return found


@pytest.fixture
def hog_rootfs(busybox_rootfs: Path, tmp_path: Path):
    """busybox + /hog in a directory the unprivileged test user can read too."""
    shared = tempfile.mkdtemp(prefix="yurt-limits-", dir="/var/tmp")
    os.chmod(shared, 0o755)
    root = Path(shared) / "rootfs"
    shutil.copytree(busybox_rootfs, root, symlinks=True)
    add_programs(root, tmp_path, "hog")
    yield root
    shutil.rmtree(shared, ignore_errors=True)


def _killed_at_memory_limit(r) -> None:
    assert r.returncode == 137, f"rc={r.returncode}\n{r.stdout}\n{r.stderr}"
    reached = [int(line.split()[1]) for line in r.stdout.splitlines() if line.startswith("allocated ")]
    assert reached and max(reached) < 64, r.stdout  # killed before 64 MiB with --memory 64M
    assert "ran out of memory" in r.stderr


def _stopped_at_pid_limit(r, limit: int) -> None:
    assert r.returncode == 0, r.stderr
    made = int(r.stdout.split()[1])
    assert 0 < made < limit, r.stdout  # the hog itself counts too


# --------------------------------------------------------------------------- as root


@pytest.mark.root
def test_root_memory_hog_is_killed_at_the_limit(yurt_cmd, hog_rootfs):
    before = _yurt_cgroups()
    _killed_at_memory_limit(yurt_cmd("exec", "--memory", "64M", hog_rootfs, "/hog", "mem", HOG_MIB))
    assert _yurt_cgroups() == before


@pytest.mark.root
def test_root_fork_bomb_stops_at_the_pid_limit(yurt_cmd, hog_rootfs):
    before = _yurt_cgroups()
    _stopped_at_pid_limit(yurt_cmd("exec", "--pids-limit", "20", hog_rootfs, "/hog", "fork", "200"), 20)
    assert _yurt_cgroups() == before


@pytest.mark.root
def test_root_cpu_limits_are_written(yurt_cmd, hog_rootfs):
    """--cpus and --cpuset land in the container's own cgroup (read from inside)."""
    script = ("for c in cpu cpuset; do p=$(grep -E \":(cpu|cpu,cpuacct|cpuacct,cpu|cpuset):\" /proc/self/cgroup "
              "| grep -E \"[:,]$c[,:]\" | cut -d: -f3); "
              "v2=$(grep '^0::' /proc/self/cgroup | cut -d: -f3); "
              "cat /sys/fs/cgroup/$c$p/cpu.cfs_quota_us /sys/fs/cgroup/$c$p/cpuset.cpus "
              "/sys/fs/cgroup$v2/cpu.max /sys/fs/cgroup$v2/cpuset.cpus 2>/dev/null; done; true")
    r = yurt_cmd("exec", "--cpus", "0.5", "--cpuset", "0", hog_rootfs, "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    values = r.stdout.split()
    assert ("50000" in values) or ("50000" in " ".join(values)), r.stdout
    assert "0" in values, r.stdout


@pytest.mark.root
def test_root_instance_limits_apply_to_joined_processes(yurt_cmd, hog_rootfs, tmp_path):
    env = {"YURT_RUNTIMEDIR": str(tmp_path / "run")}
    before = _yurt_cgroups()
    r = yurt_cmd("instance", "start", "--memory", "64M", "--pids-limit", "30", hog_rootfs, "lim", env=env)
    assert r.returncode == 0, r.stderr
    try:
        assert len(_yurt_cgroups() - before) >= 1
        r = yurt_cmd("exec", "instance://lim", "/hog", "mem", HOG_MIB, env=env)
        assert r.returncode == 137, r.stdout + r.stderr
        r = yurt_cmd("exec", "instance://lim", "/hog", "fork", "200", env=env)
        assert r.returncode == 0 and int(r.stdout.split()[1]) < 30, r.stdout
    finally:
        r = yurt_cmd("instance", "stop", "lim", env=env)
    assert r.returncode == 0, r.stderr
    assert _yurt_cgroups() == before


def _delegate(user_uid: int, gid: int) -> tuple[list[str], list[str]]:
    """Make a cgroup for memory and pids owned by the user; (dirs to remove, shell lines moving a process in)."""
    membership, mounts = _layout()
    made, enter = [], []
    name = f"yurt-test-deleg-{os.getpid()}"
    if all(c in mounts and c in membership for c in ("memory", "pids")):  # cgroup v1
        for c in ("memory", "pids"):
            d = os.path.join(mounts[c], membership[c].lstrip("/"), name)
            os.mkdir(d)
            made.append(d)
            for f in ("", "cgroup.procs", "tasks"):
                os.chown(os.path.join(d, f), user_uid, gid)
            enter.append(f"echo $$ > {d}/cgroup.procs")
        return made, enter
    v2 = mounts.get("")
    if not v2 or not {"memory", "pids"} <= set(Path(v2, "cgroup.controllers").read_text().split()):
        pytest.skip("no cgroup hierarchy with the memory and pids controllers")
    parent = os.path.join(v2, membership[""].lstrip("/"))
    while parent != v2 and Path(parent, "cgroup.procs").read_text().strip():
        parent = os.path.dirname(parent)  # v2: controllers can only be enabled where no process lives
    d = os.path.join(parent, name)
    Path(parent, "cgroup.subtree_control").write_text("+memory +pids")
    os.mkdir(d)
    Path(d, "cgroup.subtree_control").write_text("+memory +pids")
    leaf = os.path.join(d, "leaf")
    os.mkdir(leaf)
    made += [leaf, d]
    for path in (d, leaf):
        for f in ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
            os.chown(os.path.join(path, f), user_uid, gid)
    enter.append(f"echo $$ > {leaf}/cgroup.procs")
    return made, enter


@pytest.mark.root
def test_user_in_a_delegated_subtree_gets_limits(test_user, hog_rootfs):
    made, enter = _delegate(test_user.pw.pw_uid, test_user.pw.pw_gid)
    prefix = ["sh", "-c", " && ".join([*enter, 'exec "$@"']), "sh"]
    try:
        r = test_user.yurt("exec", "--memory", "64M", hog_rootfs, "/hog", "mem", HOG_MIB, prefix=prefix)
        _killed_at_memory_limit(r)
        r = test_user.yurt("exec", "--pids-limit", "20", hog_rootfs, "/hog", "fork", "200", prefix=prefix)
        _stopped_at_pid_limit(r, 20)
        for d in made:
            assert [e for e in os.listdir(d) if e.startswith("yurt-")] == []  # removed after the run
    finally:
        for d in made:
            try:
                os.rmdir(d)
            except OSError:
                pass


# --------------------------------------------------------------------------- as a user


@pytest.mark.userns
@pytest.mark.skipif(os.geteuid() == 0, reason="the rootless pass checks an undelegated user")
def test_user_without_delegation_gets_a_clear_error_or_working_limits(yurt_cmd, hog_rootfs):
    groups, problems = cgroups.plan_groups(Resources(memory=64 << 20))
    r = yurt_cmd("exec", "--memory", "64M", hog_rootfs, "/hog", "mem", HOG_MIB)
    if problems:  # the usual case: no cgroup delegated to this user
        assert r.returncode == 255
        assert "cannot apply resource limits" in r.stderr and "--allow-no-limits" in r.stderr
        assert "allocated" not in r.stdout  # nothing ran
        r = yurt_cmd("exec", "--memory", "64M", "--allow-no-limits", hog_rootfs, "/hog", "mem", "32")
        assert r.returncode == 0, r.stderr
        assert "limit NOT applied" in r.stderr and "--memory" in r.stderr
        assert "allocated all 32 MiB" in r.stdout
    else:
        _killed_at_memory_limit(r)


def test_bad_limit_values_are_usage_errors(yurt_cmd, busybox_rootfs):
    for args, words in ((("--memory", "lots"), "bad memory size"), (("--cpus", "0"), "--cpus"),
                        (("--pids-limit", "0"), "--pids-limit"), (("--cpuset", "3-1"), "bad --cpuset")):
        r = yurt_cmd("exec", *args, busybox_rootfs, "true")
        assert r.returncode == 255 and words in r.stderr, r.stderr
