"""``--sharens``: processes of one job step share one container (one user namespace per node).

Real containers, started at the same moment as MPI ranks are; nothing is mocked.  The checks are
the ones MPI needs: one user namespace for all of them, shared-memory single copy (CMA,
``process_vm_readv``) working between them, and nothing left behind after the last one.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from cprogs import add_programs
from installed_yurt import yurt_argv

pytestmark = [pytest.mark.userns]

if os.geteuid() == 0:
    pytest.skip("rootless tests run as the unprivileged test user", allow_module_level=True)

NO_JOB_ENV = {k: None for k in ("SLURM_JOB_ID", "SLURM_JOBID", "SLURM_STEP_ID", "SLURM_STEPID", "PMIX_NAMESPACE",
                                "OMPI_MCA_ess_base_jobid", "PMI_KVSNAME")}


@pytest.fixture
def cma_rootfs(busybox_rootfs_copy: Path, tmp_path: Path) -> Path:
    add_programs(busybox_rootfs_copy, tmp_path, "cma")
    return busybox_rootfs_copy


@pytest.fixture
def rundir(tmp_path: Path) -> Path:
    return tmp_path / "run"


def _env(rundir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, YURT_RUNTIMEDIR=str(rundir))
    for k in NO_JOB_ENV:
        env.pop(k, None)
    env.update(extra)
    return env


def _start(env: dict[str, str], *args: object) -> subprocess.Popen:
    return subprocess.Popen([*yurt_argv(), *map(str, args)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _finish(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        out.append((p.returncode, stdout, stderr))
    return out


def _processes_in_userns(ns: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/user") == ns:
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def _wait_gone(ns: str, rundir: Path, timeout: float = 15.0) -> None:
    """The holder exits after the last rank: no process left in the namespace, no state files."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = _processes_in_userns(ns)
        files = sorted(os.listdir(rundir / "sharens")) if (rundir / "sharens").is_dir() else []
        if not left and not files:
            return
        time.sleep(0.1)
    raise AssertionError(f"after the last rank: processes {left} still in {ns}, state files {files}")


def test_ranks_started_together_share_one_user_namespace_and_cma_works(cma_rootfs, rundir, tmp_path):
    server_file = tmp_path / "server"
    env = _env(rundir)
    procs = [_start(env, "exec", "--sharens", "--sharens-tag", "step1", cma_rootfs, "/cma", "serve", server_file, "3"),
             _start(env, "exec", "--sharens", "--sharens-tag", "step1", cma_rootfs, "/cma", "read", server_file)]
    (rc_s, _, err_s), (rc_r, out_r, err_r) = _finish(procs)
    assert rc_s == 0, err_s
    assert rc_r == 0, f"{out_r}\n{err_r}"
    words = out_r.split()
    assert words[:2] == ["cma-ok", "yurt-cma-payload"]
    mine, server = words[2].removeprefix("mine="), words[3].removeprefix("server=")
    assert mine == server
    assert mine != os.readlink("/proc/self/ns/user")  # a container user namespace, not the host's
    _wait_gone(mine, rundir)


def test_many_ranks_make_one_container_and_the_holder_leaves_after_the_last(cma_rootfs, rundir):
    env = _env(rundir)
    procs = [_start(env, "exec", "--sharens", "--sharens-tag", "step2", cma_rootfs, "/cma") for _ in range(6)]
    results = _finish(procs)
    assert all(rc == 0 for rc, _, _ in results), results
    namespaces = {out.strip() for _, out, _ in results}
    assert len(namespaces) == 1, namespaces
    _wait_gone(namespaces.pop(), rundir)


def test_a_late_rank_joins_the_running_container(cma_rootfs, rundir, tmp_path):
    """The first rank's payload keeps the container: a rank starting seconds later still joins it."""
    server_file = tmp_path / "server"
    env = _env(rundir)
    server = _start(env, "exec", "--sharens", "--sharens-tag", "late", cma_rootfs, "/cma", "serve", server_file, "6")
    deadline = time.monotonic() + 60
    while not server_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2 * 0.5 + 0.5)  # more than two polls of the holder
    [(rc_r, out_r, err_r)] = _finish([_start(env, "exec", "--sharens", "--sharens-tag", "late", cma_rootfs,
                                             "/cma", "read", server_file)])
    [(rc_s, _, err_s)] = _finish([server])
    assert rc_s == 0, err_s
    assert rc_r == 0 and out_r.startswith("cma-ok"), out_r + err_r
    words = out_r.split()
    assert words[2].removeprefix("mine=") == words[3].removeprefix("server=")
    _wait_gone(words[2].removeprefix("mine="), rundir)


def test_without_sharens_each_process_has_its_own_namespace_and_cma_fails(cma_rootfs, rundir, tmp_path):
    """What --sharens is for: separate user namespaces defeat single-copy transfers."""
    server_file = tmp_path / "server"
    env = _env(rundir)
    procs = [_start(env, "exec", cma_rootfs, "/cma", "serve", server_file, "3"),
             _start(env, "exec", cma_rootfs, "/cma", "read", server_file)]
    (_, _, _), (rc_r, out_r, _) = _finish(procs)
    assert rc_r == 1 and out_r.startswith("cma-error"), out_r
    words = out_r.split()
    assert words[-2].removeprefix("mine=") != words[-1].removeprefix("server=")


def test_slurm_step_is_the_default_tag(cma_rootfs, rundir, yurt_cmd):
    env = {**NO_JOB_ENV, "YURT_RUNTIMEDIR": str(rundir), "SLURM_JOB_ID": "77", "SLURM_STEP_ID": "3"}
    r = yurt_cmd("exec", "--sharens", cma_rootfs, "sh", "-c", f"ls {rundir}/sharens", env=env)
    assert r.returncode == 0, r.stderr
    assert any(name.endswith("-77.3.json") for name in r.stdout.split()), r.stdout


def test_sharens_outside_a_job_needs_a_tag(cma_rootfs, rundir, yurt_cmd):
    r = yurt_cmd("exec", "--sharens", cma_rootfs, "true", env={**NO_JOB_ENV, "YURT_RUNTIMEDIR": str(rundir)})
    assert r.returncode == 255
    assert "--sharens-tag" in r.stderr


def test_exit_status_and_environment_are_the_ranks_own(cma_rootfs, rundir, yurt_cmd):
    env = {**NO_JOB_ENV, "YURT_RUNTIMEDIR": str(rundir), "RANK_VALUE": "r1"}
    r = yurt_cmd("exec", "--sharens", "--sharens-tag", "s", "--env", "EXTRA=e1", "--pwd", "/etc", cma_rootfs,
                 "sh", "-c", 'echo "$RANK_VALUE $EXTRA $(pwd)"; exit 7', env=env)
    assert r.returncode == 7, r.stderr
    assert r.stdout == "r1 e1 /etc\n"


@pytest.mark.fuse
def test_sharens_with_a_sif_leaves_no_squashfuse_behind(busybox_sif, rundir):
    env = _env(rundir)
    procs = [_start(env, "exec", "--sharens", "--sharens-tag", "sif", busybox_sif, "readlink", "/proc/self/ns/user")
             for _ in range(3)]
    results = _finish(procs)
    assert all(rc == 0 for rc, _, _ in results), results
    namespaces = {out.strip() for _, out, _ in results}
    assert len(namespaces) == 1
    _wait_gone(namespaces.pop(), rundir)
    deadline = time.monotonic() + 10
    while _helpers_for(busybox_sif) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _helpers_for(busybox_sif)


def _helpers_for(image: Path) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
                with open(f"/proc/{entry}/stat", "rb") as f:
                    zombie = f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
            except OSError:
                continue
            if not zombie and b"squashfuse" in argv[0] and str(image).encode() in argv:
                found.append(int(entry))
    return found


def test_stopping_the_holder_touches_nothing_else_of_the_user(cma_rootfs, rundir):
    """SIGTERM to a --sharens holder (Slurm's scancel does that) ends the container, never the user's other
    processes: the holder is no PID namespace's init, so kill(-1) would reach all of them."""
    import json
    import signal

    bystander = subprocess.Popen(["sleep", "300"])
    try:
        rank = _start(_env(rundir), "exec", "--sharens", "--sharens-tag", "stop", cma_rootfs, "sleep", "30")
        deadline = time.monotonic() + 30
        records: list[Path] = []
        while time.monotonic() < deadline and not records:
            records = list((rundir / "sharens").glob("*.json")) if (rundir / "sharens").is_dir() else []
            time.sleep(0.1)
        assert records, "no holder record appeared"
        holder = json.loads(records[0].read_text())["pid"]
        os.kill(holder, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and os.path.exists(f"/proc/{holder}"):
            time.sleep(0.1)
        assert not os.path.exists(f"/proc/{holder}") or "Z" in open(f"/proc/{holder}/stat").read().split()[2]
        assert bystander.poll() is None, "the holder's stop signal reached an unrelated process of the user"
        rank.kill()
        rank.communicate(timeout=30)
    finally:
        bystander.kill()
        bystander.wait()
