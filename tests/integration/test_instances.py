"""``yurt instance start|list|stop`` and ``exec instance://NAME``, as the unprivileged user.

Real background containers: each test checks what a user relies on (the instance outlives the
shell that started it, runs its %startscript, can be joined, and is gone, with its processes,
squashfuse helper and state, after ``stop``).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
from installed_yurt import yurt_argv

pytestmark = [pytest.mark.userns]

if os.geteuid() == 0:
    pytest.skip("rootless tests run as the unprivileged test user", allow_module_level=True)

STARTSCRIPT = '#!/bin/sh\necho "started with $* as $(id -u)"\nexec sleep 1000\n'


@pytest.fixture(scope="module")
def instance_sif(busybox_rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """busybox with a %startscript, as a SIF (mounted with squashfuse, or unpacked without FUSE)."""
    import shutil

    from tests.conftest import make_run_yurt, missing_tools

    if missing_tools("mksquashfs"):
        pytest.skip("mksquashfs missing")
    work = tmp_path_factory.mktemp("inst")
    root = work / "rootfs"
    shutil.copytree(busybox_rootfs, root, symlinks=True)
    meta = root / ".singularity.d"
    meta.mkdir(exist_ok=True)
    (meta / "startscript").write_text(STARTSCRIPT)
    (meta / "startscript").chmod(0o755)
    sif = work / "svc.sif"
    r = make_run_yurt(work)("build", sif, root, timeout=300)
    assert r.returncode == 0, r.stderr
    return sif


@pytest.fixture
def yurt(yurt_cmd, tmp_path):
    """``yurt`` with a private state directory; stops whatever a test left running."""
    rundir = tmp_path / "run"

    def run(*args, **kw):
        env = {"YURT_RUNTIMEDIR": str(rundir), **kw.pop("env", {})}
        return yurt_cmd(*args, env=env, **kw)

    run.rundir = rundir
    yield run
    run("instance", "stop", "--all", "--timeout", "2")


def ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, f"rc={r.returncode}\nstdout={r.stdout}\nstderr={r.stderr}"
    return r.stdout


def _listing(yurt) -> list[dict]:
    return json.loads(ok(yurt("instance", "list", "--json")))["instances"]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def _helpers_for(image: Path) -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"squashfuse" in argv[0] and str(image).encode() in argv and _alive(int(entry)):
            found.append(int(entry))
    return found


def _processes_in(userns: str) -> list[int]:
    out = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{entry}/ns/user") == userns and _alive(int(entry)):
                out.append(int(entry))
        except OSError:
            continue
    return out


def test_start_join_stop(yurt, instance_sif):
    out = ok(yurt("instance", "start", instance_sif, "web", "a", "b"))
    assert "web" in out
    [inst] = _listing(yurt)
    assert inst["name"] == "web" and inst["image"] == str(instance_sif)
    pid = inst["pid"]
    assert _alive(pid)
    # joined: PID 1 is the instance's init, the start script's sleep runs beside us
    ps = ok(yurt("exec", "instance://web", "ps", "-o", "pid,args"))
    assert "sleep 1000" in ps
    assert ps.split("\n")[1].split()[0] == "1"
    r = yurt("exec", "instance://web", "sh", "-c", 'echo "$YURT_INSTANCE $(cat /proc/1/cmdline | wc -c)"; exit 5')
    assert r.returncode == 5
    name, size = r.stdout.split()
    assert name == "web" and int(size) > 0
    userns = os.readlink(f"/proc/{pid}/ns/user")
    joined = ok(yurt("exec", "instance://web", "readlink", "/proc/self/ns/user")).strip()
    assert joined == userns
    log = Path(inst["stdout"]).read_text()
    assert f"started with a b as {os.getuid()}" in log
    ok(yurt("instance", "stop", "web"))
    assert not _alive(pid)
    assert _listing(yurt) == []
    deadline = time.monotonic() + 10
    while (_processes_in(userns) or _helpers_for(instance_sif)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_in(userns) == []
    assert _helpers_for(instance_sif) == []
    assert [p for p in os.listdir(yurt.rundir / "instances") if not p.endswith(".lock")] == []


def test_instance_survives_the_shell_that_started_it(yurt, instance_sif, tmp_path):
    """Started from a shell in its own session that is then killed, with its whole process group."""
    env = dict(os.environ, YURT_RUNTIMEDIR=str(yurt.rundir))
    script = f"{shlex.join(yurt_argv())} instance start {instance_sif} bg >/dev/null 2>&1; kill -9 0"
    shell = subprocess.Popen(["setsid", "sh", "-c", script], env=env, cwd=tmp_path)
    shell.wait(timeout=120)
    assert shell.returncode == -signal.SIGKILL
    [inst] = _listing(yurt)
    pid = inst["pid"]
    assert _alive(pid)
    assert os.getsid(pid) != os.getsid(0)
    assert os.readlink(f"/proc/{pid}/fd/1") == inst["stdout"]
    assert ok(yurt("exec", "instance://bg", "echo", "still-here")) == "still-here\n"
    ok(yurt("instance", "stop", "bg"))
    assert not _alive(pid)


def test_image_without_startscript_idles_until_stopped(yurt, busybox_rootfs):
    ok(yurt("instance", "start", busybox_rootfs, "idle"))
    [inst] = _listing(yurt)
    ps = ok(yurt("exec", "instance://idle", "ps", "-o", "pid"))
    assert ps.split()[1:] and "1" in ps.split()
    r = yurt("instance", "stop", "--signal", "INT", "idle")
    assert r.returncode == 0, r.stderr
    assert not _alive(inst["pid"])


def test_stale_state_is_cleaned(yurt, busybox_rootfs):
    ok(yurt("instance", "start", busybox_rootfs, "doomed"))
    [inst] = _listing(yurt)
    os.kill(inst["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(inst["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _listing(yurt) == []
    assert not (yurt.rundir / "instances" / "doomed.json").exists()
    r = yurt("exec", "instance://doomed", "true")
    assert r.returncode == 255 and "no instance named doomed" in r.stderr
    # the name is free again
    ok(yurt("instance", "start", busybox_rootfs, "doomed"))
    assert [i["name"] for i in _listing(yurt)] == ["doomed"]


def test_errors_are_one_clear_line(yurt, busybox_rootfs):
    ok(yurt("instance", "start", busybox_rootfs, "dup"))
    r = yurt("instance", "start", busybox_rootfs, "dup")
    assert r.returncode == 255 and "instance dup already exists" in r.stderr
    r = yurt("instance", "stop", "nothere")
    assert r.returncode == 255 and "no instance named nothere" in r.stderr
    r = yurt("instance", "start", busybox_rootfs, "bad/name")
    assert r.returncode == 255 and "bad instance name" in r.stderr
    r = yurt("instance", "stop", "--signal", "NOPE", "dup")
    assert r.returncode == 255 and "unknown signal" in r.stderr


def test_stop_all_and_a_term_ignoring_start_script_is_killed_after_the_timeout(yurt, busybox_rootfs_copy):
    meta = busybox_rootfs_copy / ".singularity.d"
    meta.mkdir(exist_ok=True)
    (meta / "startscript").write_text("#!/bin/sh\ntrap '' TERM\nwhile :; do sleep 1; done\n")
    (meta / "startscript").chmod(0o755)
    ok(yurt("instance", "start", busybox_rootfs_copy, "one"))
    ok(yurt("instance", "start", busybox_rootfs_copy, "two"))
    pids = [i["pid"] for i in _listing(yurt)]
    assert len(pids) == 2
    t0 = time.monotonic()
    out = ok(yurt("instance", "stop", "--all", "--timeout", "1"))
    assert "one" in out and "two" in out
    assert time.monotonic() - t0 < 30
    assert not any(_alive(p) for p in pids)
    assert _listing(yurt) == []
