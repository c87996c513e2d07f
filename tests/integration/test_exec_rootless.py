"""``yurt exec/run/shell`` against the real kernel, as an unprivileged user.

Each test starts real containers (user + mount namespaces, overlayfs,
pivot_root); nothing is mocked.  The image is a busybox root filesystem built
by the test set-up from the host's busybox-static.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from installed_yurt import yurt_argv

pytestmark = [pytest.mark.userns]

if os.geteuid() == 0:
    pytest.skip("rootless tests run as the unprivileged test user", allow_module_level=True)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"rc={result.returncode}\nstdout={result.stdout}\nstderr={result.stderr}"
    return result.stdout


def test_true_identity(yurt_cmd, busybox_rootfs):
    out = ok(yurt_cmd("exec", busybox_rootfs, "sh", "-c", "id -u; id -g; cat /proc/self/uid_map"))
    lines = out.split()
    assert lines[0] == str(os.getuid())
    assert lines[1] == str(os.getgid())
    assert lines[2:5] == [str(os.getuid()), str(os.getuid()), "1"]


def test_user_appears_in_passwd_with_home(yurt_cmd, busybox_rootfs):
    out = ok(yurt_cmd("exec", busybox_rootfs, "sh", "-c", 'whoami; grep "^$(whoami):" /etc/passwd'))
    name = out.split()[0]
    import pwd

    assert name == pwd.getpwuid(os.getuid()).pw_name
    assert f":{os.getuid()}:{os.getgid()}:" in out
    assert os.path.expanduser("~") in out


def _shell_status(*args) -> int:
    """The status a shell script sees (``$?``): 128+N for death by signal N."""
    cmd = " ".join([*yurt_argv(), *[f"'{a}'" for a in args]])
    out = subprocess.run(["/bin/sh", "-c", f"{cmd}; echo $?"], capture_output=True, text=True)
    return int(out.stdout.split()[-1])


def test_exit_status_and_signal_death(yurt_cmd, busybox_rootfs):
    assert yurt_cmd("exec", busybox_rootfs, "sh", "-c", "exit 42").returncode == 42
    # Without --pid yurt *is* the payload, so the caller sees the signal death itself.
    assert yurt_cmd("exec", busybox_rootfs, "sh", "-c", "kill -TERM $$").returncode == -signal.SIGTERM
    assert _shell_status("exec", busybox_rootfs, "sh", "-c", "kill -TERM $$") == 128 + signal.SIGTERM
    # Under a PID namespace the supervisor reports it as an exit status of 128+N.
    assert yurt_cmd("exec", "--pid", busybox_rootfs, "sh", "-c", "kill -KILL $$").returncode == 128 + 9


def test_stdin_stdout_stderr_are_the_payloads(yurt_cmd, busybox_rootfs):
    script = "read a; echo got:$a; echo err >&2\n"
    r = yurt_cmd("exec", busybox_rootfs, "sh", "-c", script, input="hello\n")
    assert r.stdout == "got:hello\n"
    assert r.stderr == "err\n"
    # `cat job.sh | yurt exec img sh -` style
    r = yurt_cmd("exec", busybox_rootfs, "sh", "-", input="echo from-stdin; exit 3\n")
    assert r.stdout == "from-stdin\n" and r.returncode == 3


def _popen_yurt(*args) -> subprocess.Popen:
    """yurt running in the background, its stdout a pipe, to signal it while it runs."""
    return subprocess.Popen([*yurt_argv(), *map(str, args)], stdout=subprocess.PIPE, text=True)


def test_payload_is_exec_not_child(busybox_rootfs):
    """Without --pid, yurt replaces itself with the payload: same PID, signals go straight in."""
    proc = _popen_yurt(
        "exec",
        str(busybox_rootfs),
        "sh",
        "-c",
        'trap "echo TERM; exit 9" TERM; echo $$; while :; do sleep 0.1; done',
    )
    assert proc.stdout is not None
    reported = int(proc.stdout.readline())
    assert reported == proc.pid
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 9
    assert proc.stdout.read() == "TERM\n"


def test_signals_forwarded_through_pid_namespace(busybox_rootfs):
    proc = _popen_yurt(
        "exec",
        "--pid",
        str(busybox_rootfs),
        "sh",
        "-c",
        'trap "echo USR1; exit 5" USR1; echo ready; while :; do sleep 0.1; done',
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=10) == 5
    assert proc.stdout.read() == "USR1\n"


def test_pid_namespace_has_init_and_reaps(yurt_cmd, busybox_rootfs):
    out = ok(yurt_cmd("exec", "--pid", busybox_rootfs, "sh", "-c", "echo $$; ps -o pid,comm | awk '$1==1'"))
    pid, init_line = out.splitlines()[0], out.splitlines()[1]
    assert pid == "2"
    assert "1" in init_line.split()[0]
    out = ok(yurt_cmd("exec", "--pid", "--no-init", busybox_rootfs, "sh", "-c", "echo $$"))
    assert out.strip() == "1"


def test_no_new_privs_and_nosuid(yurt_cmd, busybox_rootfs):
    out = ok(yurt_cmd("exec", busybox_rootfs, "sh", "-c", "grep NoNewPrivs /proc/self/status; grep ' / ' /proc/mounts"))
    assert "NoNewPrivs:\t1" in out
    root_line = [line for line in out.splitlines() if " / " in line][0]
    assert "nosuid" in root_line and "ro" in root_line.split()[3].split(",")


def test_no_fd_leaks(yurt_cmd, busybox_rootfs):
    out = ok(yurt_cmd("exec", busybox_rootfs, "sh", "-c", "ls /proc/$$/fd; :"))  # ':' keeps sh from exec'ing ls
    assert sorted(out.split()) == ["0", "1", "2"]


def test_default_binds_home_tmp_cwd(yurt_cmd, busybox_rootfs, tmp_path):
    marker = tmp_path / "marker"
    marker.write_text("tmp-visible\n")
    home = Path(os.path.expanduser("~"))
    out = ok(
        yurt_cmd(
            "exec",
            busybox_rootfs,
            "sh",
            "-c",
            f'cat {marker}; pwd; echo $HOME; test -d "$HOME" && echo homeok',
            cwd=tmp_path,
        )
    )
    assert out.splitlines() == ["tmp-visible", str(tmp_path), str(home), "homeok"]
    # /var/tmp too, and writes land on the host
    vt = Path("/var/tmp") / f"yurt-test-{os.getpid()}"
    try:
        ok(yurt_cmd("exec", busybox_rootfs, "sh", "-c", f"echo written > {vt}"))
        assert vt.read_text() == "written\n"
    finally:
        vt.unlink(missing_ok=True)


def test_cwd_outside_default_binds_is_bound(yurt_cmd, busybox_rootfs):
    # A directory not under $HOME or /tmp: the working directory is still there.
    cwd = Path("/var/tmp") / f"yurt-cwd-{os.getpid()}"
    cwd.mkdir()
    try:
        (cwd / "f").write_text("x")
        out = ok(yurt_cmd("exec", busybox_rootfs, "sh", "-c", "pwd; ls", cwd=cwd))
        assert out.split() == [str(cwd), "f"]
    finally:
        (cwd / "f").unlink()
        cwd.rmdir()


def test_bind_flags(yurt_cmd, busybox_rootfs, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "fa").write_text("A")
    (b / "fb").write_text("B")
    r = yurt_cmd(
        "exec",
        "-B",
        f"{a}:/data/a,{b}:/mnt/b:ro",
        "--bind",
        f"{a}:/opt/again",
        busybox_rootfs,
        "sh",
        "-c",
        "cat /data/a/fa /mnt/b/fb /opt/again/fa; echo new > /data/a/new; touch /mnt/b/x 2>&1 || echo ro-ok",
    )
    out = ok(r)
    assert out.startswith("ABA")
    assert "ro-ok" in out
    assert (a / "new").read_text() == "new\n"
    assert not (b / "x").exists()


def test_nested_bind_mountpoints_are_made_in_the_outer_bind(yurt_cmd, busybox_rootfs, tmp_path):
    """A bind whose destination lies in an earlier bind and does not exist there gets its mount point made
    in that bind's source on the host, as Apptainer does (cwltool binds each input into its output
    directory, bound as --home); in a read-only bind that cannot be, and the error says so in one line."""
    out, data, ro = tmp_path / "out", tmp_path / "data", tmp_path / "ro"
    for d in (out, data, ro):
        d.mkdir()
    (data / "in.txt").write_text("input\n")
    (data / "sub").mkdir()
    (data / "sub" / "f").write_text("f\n")
    r = yurt_cmd("exec", "--home", f"{out}:/work", "-B", f"{data / 'in.txt'}:/work/stage/in.txt:ro",
                 "--mount", f"type=bind,source={data / 'sub'},target=/work/dir", busybox_rootfs,
                 "sh", "-c", "cat /work/stage/in.txt /work/dir/f")
    assert ok(r) == "input\nf\n"
    assert (out / "stage" / "in.txt").is_file() and (out / "stage" / "in.txt").read_text() == ""  # the mount point
    assert (out / "dir").is_dir() and list((out / "dir").iterdir()) == []
    r = yurt_cmd("exec", "-B", f"{ro}:/srv/ro:ro", "-B", f"{data / 'in.txt'}:/srv/ro/x", busybox_rootfs, "true")
    assert r.returncode == 255 and r.stderr.count("\n") == 1, r.stderr
    assert "/srv/ro/x does not exist in the container and cannot be created" in r.stderr, r.stderr
    assert list(ro.iterdir()) == []


def test_bind_errors_are_one_line(yurt_cmd, busybox_rootfs):
    r = yurt_cmd("exec", "-B", "/nonexistent-src:/x", busybox_rootfs, "true")
    assert r.returncode == 255
    assert r.stderr.count("\n") == 1 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    r = yurt_cmd("exec", "-B", "/tmp:relative", busybox_rootfs, "true")
    assert r.returncode == 255 and "absolute" in r.stderr


def test_home_options(yurt_cmd, busybox_rootfs, tmp_path):
    fake_home = tmp_path / "h"
    fake_home.mkdir()
    (fake_home / "dot").write_text("here")
    out = ok(yurt_cmd("exec", "-H", f"{fake_home}:/home/other", busybox_rootfs, "sh", "-c", "echo $HOME; cat ~/dot"))
    assert out == "/home/other\nhere"
    real_home = os.path.expanduser("~")
    out = ok(
        yurt_cmd(
            "exec", "--no-home", "--pwd", "/", busybox_rootfs, "sh", "-c", f"ls {real_home} 2>/dev/null | wc -l; pwd"
        )
    )
    assert out.split() == ["0", "/"]


def test_contain_and_containall(yurt_cmd, busybox_rootfs, tmp_path):
    (tmp_path / "hostfile").write_text("x")
    out = ok(
        yurt_cmd(
            "exec",
            "--contain",
            busybox_rootfs,
            "sh",
            "-c",
            f"ls /dev; ls /tmp | wc -l; ls -a $HOME | wc -l; test -e {tmp_path}/hostfile || echo tmp-hidden",
        )
    )
    devs = set(out.split())
    assert {"null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "ptmx", "fd"} <= devs
    assert "tmp-hidden" in out
    env = {"YURT_TEST_HOSTVAR": "leak"}
    out = ok(
        yurt_cmd(
            "exec",
            "--containall",
            busybox_rootfs,
            "sh",
            "-c",
            "echo $$; echo [$YURT_TEST_HOSTVAR]; echo $LANG",
            env=env,
        )
    )
    assert out.split() == ["2", "[]", "C"]


def test_minimal_dev_nodes_work(yurt_cmd, busybox_rootfs):
    out = ok(
        yurt_cmd(
            "exec",
            "-c",
            busybox_rootfs,
            "sh",
            "-c",
            "head -c 4 /dev/zero | wc -c; head -c 8 /dev/urandom | wc -c; echo x > /dev/null && echo null-ok",
        )
    )
    assert out.split() == ["4", "8", "null-ok"]


def test_uts_ipc_net_namespaces(yurt_cmd, busybox_rootfs):
    out = ok(yurt_cmd("exec", "--hostname", "yurtbox", busybox_rootfs, "hostname"))
    assert out.strip() == "yurtbox"
    host_ipc = os.readlink("/proc/self/ns/ipc")
    out = ok(yurt_cmd("exec", "--ipc", busybox_rootfs, "readlink", "/proc/self/ns/ipc"))
    assert out.strip() != host_ipc
    out = ok(
        yurt_cmd("exec", "--net", busybox_rootfs, "sh", "-c", "ls /sys/class/net; cat /sys/class/net/lo/operstate")
    )
    names = out.split()
    assert names[:-1] == ["lo"]
    # host network by default
    host_net = os.readlink("/proc/self/ns/net")
    assert ok(yurt_cmd("exec", busybox_rootfs, "readlink", "/proc/self/ns/net")).strip() == host_net


def test_fakeroot(yurt_cmd, busybox_rootfs):
    out = ok(
        yurt_cmd("exec", "--fakeroot", busybox_rootfs, "sh", "-c", "id -u; id -g; echo $HOME; cat /proc/self/uid_map")
    )
    lines = out.splitlines()
    assert lines[0] == "0" and lines[1] == "0" and lines[2] == "/root"
    assert lines[3].split() == ["0", str(os.getuid()), "1"]


def test_writable_tmpfs_is_discarded(yurt_cmd, busybox_rootfs):
    out = ok(
        yurt_cmd("exec", "--writable-tmpfs", busybox_rootfs, "sh", "-c", "echo hi > /scratchfile; cat /scratchfile")
    )
    assert out == "hi\n"
    r = yurt_cmd("exec", busybox_rootfs, "cat", "/scratchfile")
    assert r.returncode != 0
    r = yurt_cmd(
        "exec",
        "--writable-tmpfs-size",
        "1",
        busybox_rootfs,
        "sh",
        "-c",
        "dd if=/dev/zero of=/big bs=1024 count=4096 2>/dev/null || echo full",
    )
    assert "full" in r.stdout


def test_overlay_dir_persists(yurt_cmd, busybox_rootfs, tmp_path):
    ov = tmp_path / "ov"
    ov.mkdir()
    ok(yurt_cmd("exec", "--overlay", str(ov), busybox_rootfs, "sh", "-c", "mkdir -p /opt/app && echo v1 > /opt/app/f"))
    assert (ov / "upper" / "opt" / "app" / "f").read_text() == "v1\n"
    out = ok(
        yurt_cmd(
            "exec",
            "--overlay",
            f"{ov}:ro",
            busybox_rootfs,
            "sh",
            "-c",
            "cat /opt/app/f; touch /opt/app/g 2>&1 || echo ro",
        )
    )
    assert out.startswith("v1\n") and "ro" in out
    work = ov / "work" / "work"  # overlayfs leaves its work dir at mode 000: let pytest clean up
    if work.exists():
        work.chmod(0o700)


def test_environment_rules(yurt_cmd, busybox_rootfs, tmp_path):
    envfile = tmp_path / "env"
    envfile.write_text("# comment\nFROMFILE='file value'\nexport OVER=file\n")
    env = {
        "HOSTVAR": "passes",
        "LD_LIBRARY_PATH": "/host/lib",
        "PATH": "/host/bin:/usr/bin",
        "YURTENV_INJECTED": "yes",
        "YURTENV_PREPEND_PATH": "/first",
        "OVER": "host",
    }
    out = ok(
        yurt_cmd(
            "exec",
            "--env-file",
            str(envfile),
            "--env",
            "OVER=cli",
            busybox_rootfs,
            "sh",
            "-c",
            'echo "$HOSTVAR|$LD_LIBRARY_PATH|$PATH|$INJECTED|$FROMFILE|$OVER|$YURT_CONTAINER|$YURT_NAME"',
            env=env,
        )
    )
    fields = out.strip().split("|")
    assert fields[0] == "passes"
    assert fields[1] == ""
    assert fields[2].startswith("/first:") and "/host/bin" not in fields[2]
    assert fields[3:6] == ["yes", "file value", "cli"]
    assert fields[6] == str(busybox_rootfs) and fields[7] == Path(busybox_rootfs).name
    out = ok(yurt_cmd("exec", "--cleanenv", busybox_rootfs, "sh", "-c", "echo [$HOSTVAR]", env=env))
    assert out.strip() == "[]"


def test_image_env_scripts_and_precedence(yurt_cmd, busybox_rootfs_copy):
    envd = busybox_rootfs_copy / ".singularity.d" / "env"
    envd.mkdir(parents=True, exist_ok=True)
    (envd / "90-environment.sh").write_text(
        'export IMGVAR=image\nexport OVERRIDE=image\nexport PATH="/opt/tool/bin:$PATH"\n'
    )
    out = ok(
        yurt_cmd(
            "exec",
            "--env",
            "OVERRIDE=cli",
            busybox_rootfs_copy,
            "sh",
            "-c",
            'echo "$IMGVAR $OVERRIDE $PATH"',
            env={"IMGVAR": "host"},
        )
    )
    imgvar, override, path = out.split()
    assert imgvar == "image"  # image beats host
    assert override == "cli"  # --env beats image
    assert path.startswith("/opt/tool/bin:")


def test_run_and_shell(yurt_cmd, busybox_rootfs_copy):
    sd = busybox_rootfs_copy / ".singularity.d"
    sd.mkdir(exist_ok=True)
    rs = sd / "runscript"
    rs.write_text('#!/bin/sh\necho "runscript args: $*"\n')
    rs.chmod(0o755)
    assert ok(yurt_cmd("run", busybox_rootfs_copy, "a", "b c")) == "runscript args: a b c\n"
    rs.unlink()
    r = yurt_cmd("run", busybox_rootfs_copy)
    assert r.returncode == 255 and "no runscript" in r.stderr
    r = yurt_cmd("shell", busybox_rootfs_copy, input="echo in-shell $PS1\nexit 4\n")
    assert r.returncode == 4 and "in-shell" in r.stdout


def test_command_not_found_and_not_executable(yurt_cmd, busybox_rootfs):
    r = yurt_cmd("exec", busybox_rootfs, "no-such-command")
    assert r.returncode == 127 and "not found" in r.stderr and "Traceback" not in r.stderr
    r = yurt_cmd("exec", busybox_rootfs, "/etc/passwd")
    assert r.returncode == 126


def test_cli_errors(yurt_cmd, busybox_rootfs, tmp_path):
    r = yurt_cmd("exec", str(tmp_path / "missing.sif"), "true")
    assert r.returncode == 255 and r.stderr.startswith("yurt: error:") and r.stderr.count("\n") == 1
    r = yurt_cmd("exec", "--no-such-flag", busybox_rootfs, "true")
    assert r.returncode == 255 and "unknown option" in r.stderr
    r = yurt_cmd("frobnicate")
    assert r.returncode == 255 and "unknown command" in r.stderr
    r = yurt_cmd("--debug", "exec", str(tmp_path / "missing.sif"), "true")
    assert "Traceback" in r.stderr


def test_flags_from_environment(yurt_cmd, busybox_rootfs, tmp_path):
    (tmp_path / "f").write_text("x")
    out = ok(
        yurt_cmd(
            "exec",
            busybox_rootfs,
            "sh",
            "-c",
            f"test -e {tmp_path}/f && echo visible || echo hidden",
            env={"YURT_CONTAIN": "1"},
        )
    )
    assert out.strip() == "hidden"
    out = ok(yurt_cmd("exec", busybox_rootfs, "cat", "/bound/f", env={"YURT_BIND": f"{tmp_path}:/bound"}))
    assert out == "x"


def test_hostile_symlink_destination_stays_inside(yurt_cmd, busybox_rootfs_copy, tmp_path):
    """A destination that is a symlink pointing far outside resolves inside the root."""
    target = f"/opt/yurt-escape-{os.getpid()}"
    (busybox_rootfs_copy / "evil").symlink_to("../../../../../../../.." + target)
    src = tmp_path / "src"
    src.mkdir()
    (src / "inside").write_text("ok")
    out = ok(yurt_cmd("exec", "-B", f"{src}:/evil", busybox_rootfs_copy, "cat", f"{target}/inside"))
    assert out == "ok"
    assert not os.path.exists(target)


def test_symlink_loop_is_a_clear_error(yurt_cmd, busybox_rootfs_copy, tmp_path):
    (busybox_rootfs_copy / "loop1").symlink_to("loop2")
    (busybox_rootfs_copy / "loop2").symlink_to("loop1")
    r = yurt_cmd("exec", "-B", f"{tmp_path}:/loop1", busybox_rootfs_copy, "true")
    assert r.returncode == 255 and "symbolic links" in r.stderr


def _squashfuse_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-u", str(os.getuid()), "squashfuse"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def _assert_no_new_squashfuse(before: set[int]) -> None:
    """The helper exits by itself once the container's mount namespace is gone (allow 5 s)."""
    deadline = time.time() + 5
    while _squashfuse_pids() - before and time.time() < deadline:
        time.sleep(0.05)
    assert not (_squashfuse_pids() - before), "squashfuse helper outlived the container"


@pytest.mark.fuse
def test_sif_runs_via_squashfuse_and_helper_exits(yurt_cmd, busybox_sif):
    before = _squashfuse_pids()
    r = yurt_cmd("--debug", "exec", busybox_sif, "sh", "-c", "echo in-sif; exit 3")
    assert r.returncode == 3 and r.stdout == "in-sif\n"
    assert "squashfuse" in r.stderr  # the strategy used, from the debug log
    _assert_no_new_squashfuse(before)


@pytest.mark.fuse
def test_sif_helper_cleaned_up_when_payload_killed(busybox_sif):
    before = _squashfuse_pids()
    proc = _popen_yurt("exec", busybox_sif, "sh", "-c", "echo up; sleep 60")
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    proc.kill()
    proc.wait(timeout=10)
    _assert_no_new_squashfuse(before)


def test_unsquash_fallback_uses_local_cache(yurt_cmd, busybox_sif, tmp_path):
    env = {"YURT_LOCAL_CACHEDIR": str(tmp_path / "cache")}
    r = yurt_cmd("exec", "--unsquash", busybox_sif, "echo", "unpacked", env=env)
    assert ok(r) == "unpacked\n"
    assert r.stderr.count("notice") == 1 and "unpacking" in r.stderr
    r = yurt_cmd("exec", "--unsquash", busybox_sif, "echo", "again", env=env)
    assert ok(r) == "again\n" and "unpacking" not in r.stderr  # reused
    entries = [p for p in (tmp_path / "cache" / "unpacked").iterdir()]
    assert len(entries) == 1 and not entries[0].name.endswith(".tmp")


def test_unsquash_storm_unpacks_once_per_node(busybox_sif, tmp_path):
    """Ranks starting together on a node: one unpacks, the others wait for it and reuse it."""
    env = {**os.environ, "YURT_LOCAL_CACHEDIR": str(tmp_path / "cache")}
    procs = [subprocess.Popen([*yurt_argv(), "exec", "--unsquash", str(busybox_sif), "echo", "ok"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    results = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    assert [r[0] for r in results] == ["ok\n"] * 6, results
    assert sum(r[1].count("unpacking") for r in results) == 1, [r[1] for r in results]
    assert [p.name for p in (tmp_path / "cache" / "unpacked").iterdir()] == [
        next((tmp_path / "cache" / "unpacked").iterdir()).name]


def test_fakeroot_single_id_map(yurt_cmd, busybox_rootfs):
    out = ok(
        yurt_cmd("exec", "--fakeroot", "--ignore-subuid", busybox_rootfs, "sh", "-c", "id -u; cat /proc/self/uid_map")
    )
    lines = out.splitlines()
    assert lines[0] == "0"
    assert [line.split() for line in lines[1:]] == [["0", str(os.getuid()), "1"]]


def test_fakeroot_subuid_range_when_available(yurt_cmd, busybox_rootfs):
    import pwd

    name = pwd.getpwuid(os.getuid()).pw_name
    with open("/etc/subuid") as f:
        if not any(line.split(":")[0] in (name, str(os.getuid())) for line in f):
            pytest.skip("no /etc/subuid range for the test user")
    out = ok(yurt_cmd("exec", "--fakeroot", busybox_rootfs, "cat", "/proc/self/uid_map"))
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["0", str(os.getuid()), "1"]
    assert len(rows) == 2 and rows[1][0] == "1" and int(rows[1][2]) > 1


def test_sif_objects_runscript_and_environment(yurt_cmd, busybox_rootfs, tmp_path):
    """A SIF's own runscript and environment objects are used by run/exec."""
    from yurt.image.pack import build_sif

    sif = tmp_path / "objs.sif"
    build_sif(
        busybox_rootfs,
        sif,
        runscript=b'#!/bin/sh\necho "sif runscript: $* $FROM_SIF"\n',
        env_script=b"export FROM_SIF=sif-env\n",
    )
    assert ok(yurt_cmd("run", "--unsquash", sif, "x", env={"YURT_LOCAL_CACHEDIR": str(tmp_path / "c")})) == (
        "sif runscript: x sif-env\n"
    )
    out = ok(
        yurt_cmd(
            "exec", "--unsquash", sif, "sh", "-c", "echo $FROM_SIF", env={"YURT_LOCAL_CACHEDIR": str(tmp_path / "c")}
        )
    )
    assert out == "sif-env\n"


def test_oci_config_run_semantics(yurt_cmd, busybox_rootfs_copy):
    """Entrypoint + Cmd, args replacing Cmd, WorkingDir and Env, as `docker run` does."""
    import json

    sd = busybox_rootfs_copy / ".singularity.d"
    sd.mkdir(exist_ok=True)
    (sd / "runscript").unlink(missing_ok=True)  # a runscript would win over the OCI config
    (busybox_rootfs_copy / "work").mkdir()
    cfg = {"Entrypoint": ["/bin/echo", "entry"], "Cmd": ["default"], "WorkingDir": "/work", "Env": ["OCIVAR=oci"]}
    (sd / "oci-config.json").write_text(json.dumps(cfg))
    assert ok(yurt_cmd("run", busybox_rootfs_copy)) == "entry default\n"
    assert ok(yurt_cmd("run", busybox_rootfs_copy, "given")) == "entry given\n"
    cfg["Entrypoint"] = ["/bin/sh", "-c", 'echo "$(pwd) $OCIVAR"']
    cfg["Cmd"] = []
    (sd / "oci-config.json").write_text(json.dumps(cfg))
    assert ok(yurt_cmd("run", busybox_rootfs_copy)) == "/work oci\n"
    # exec keeps the caller's working directory, as Apptainer users expect
    assert ok(yurt_cmd("exec", busybox_rootfs_copy, "sh", "-c", "echo $OCIVAR")) == "oci\n"


def _signal_masks(status: str) -> tuple[int, int]:
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    return int(fields["SigIgn"], 16), int(fields["SigBlk"], 16)


def test_payload_gets_default_signal_dispositions(yurt_cmd, busybox_rootfs):
    """Python ignores SIGPIPE/SIGXFSZ and the supervisor blocks signals: none of that reaches the
    payload, which gets exactly what a program started directly from here would get."""
    bare = _signal_masks(subprocess.run(["cat", "/proc/self/status"], capture_output=True, text=True).stdout)
    for flags in ([], ["--pid"]):
        out = ok(yurt_cmd("exec", *flags, busybox_rootfs, "cat", "/proc/self/status"))
        ignored, blocked = _signal_masks(out)
        assert ignored == bare[0], flags
        assert blocked == bare[1], flags
        assert not ignored & (1 << (signal.SIGPIPE - 1)) and not ignored & (1 << (signal.SIGXFSZ - 1)), flags


def test_supplementary_groups_are_kept(yurt_cmd, busybox_rootfs):
    """The kernel keeps the caller's groups in the user namespace; unmapped ones show as the
    overflow gid.  (That they still grant access is checked by the root tests.)"""
    groups = set(os.getgroups()) | {os.getgid()}
    if len(groups) < 2:
        pytest.skip("the test user has no supplementary group")
    out = ok(yurt_cmd("exec", busybox_rootfs, "id", "-G"))
    inside = out.split()
    assert len(inside) == len(groups)
    overflow = open("/proc/sys/kernel/overflowgid").read().strip()
    assert str(os.getgid()) in inside and overflow in inside


def test_writable_sandbox(yurt_cmd, busybox_rootfs_copy, busybox_sif):
    out = ok(
        yurt_cmd(
            "exec",
            "--writable",
            "--fakeroot",
            busybox_rootfs_copy,
            "sh",
            "-c",
            "mkdir -p /opt/tool && echo built > /opt/tool/f && id -u",
        )
    )
    assert out == "0\n"
    assert (busybox_rootfs_copy / "opt" / "tool" / "f").read_text() == "built\n"
    # the new file belongs to the user outside, root inside
    assert (busybox_rootfs_copy / "opt" / "tool" / "f").stat().st_uid == os.getuid()
    r = yurt_cmd("exec", "--writable", busybox_sif, "true")
    assert r.returncode == 255 and "read-only" in r.stderr


@pytest.mark.skipif(os.uname().machine not in ("x86_64", "aarch64"), reason="filter built for x86_64/aarch64")
def test_fake_ownership_lets_chown_succeed_in_single_id_fakeroot(yurt_cmd, busybox_rootfs_copy):
    script = "touch /tmp/f && chown 1234:1234 /tmp/f && echo chowned; mknod /tmp/n c 1 3 && echo mknod"
    flags = ["exec", "--fakeroot", "--ignore-subuid", "--contain"]
    plain = yurt_cmd(*flags, busybox_rootfs_copy, "sh", "-c", script)
    assert "chowned" not in plain.stdout  # 1234 is not mapped: EINVAL
    faked = ok(yurt_cmd(*flags, "--fake-ownership", busybox_rootfs_copy, "sh", "-c", script + "; ls -n /tmp/f"))
    assert "chowned" in faked and "mknod" in faked
    assert " 0 " in faked.splitlines()[-1]  # still owned by the one mapped id


def test_cwd_in_system_paths_is_not_bound_over_the_image(yurt_cmd, busybox_rootfs):
    """From / or /usr the container keeps its own tree (the busybox image has no /usr/lib)."""
    out = ok(yurt_cmd("exec", busybox_rootfs, "sh", "-c", "pwd; cat /etc/os-release | head -1", cwd="/"))
    assert out.splitlines() == ["/", 'NAME="BusyBox"']
    out = ok(
        yurt_cmd(
            "exec", busybox_rootfs, "sh", "-c", "test -d /usr/lib/python3 && echo host || echo image", cwd="/usr/lib"
        )
    )
    assert out.strip() == "image"
