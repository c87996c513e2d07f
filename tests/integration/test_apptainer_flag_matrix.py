"""Every option of Apptainer 1.3's exec/run/shell/test, instance, build, pull and inspect (the reference
study, ../shared/reference/apptainer.md, sections 1.1 and 1.2) is either implemented, with a behaviour test
named here, or refused with one line naming it: never "unknown option", never silently ignored.

:data:`MATRIX` says which for each option.  The tests check that it covers every option of the reference
(the list copied below, and the study itself when it is beside the repository), that each behaviour test
it names exists, that each refusal is one clear line, and (here) the behaviour of the options that no other
test covers.  Run as the unprivileged user through a link named ``apptainer``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from installed_yurt import REPO_ROOT, yurt_link

pytestmark = [pytest.mark.userns]

if os.geteuid() == 0:
    pytest.skip("rootless tests run as the unprivileged test user", allow_module_level=True)

TESTS = Path(__file__).resolve().parent.parent
COMPAT = "integration/test_apptainer_compat.py"
HERE = "integration/test_apptainer_flag_matrix.py"
REGISTRY = "e2e/test_apptainer_registry.py"
EXEC = "integration/test_exec_rootless.py"
R = "refused"
STOP_ALL = "integration/test_instances.py::test_stop_all_and_a_term_ignoring_start_script_is_killed_after_the_timeout"

# Apptainer 1.3's options, per command, as the reference lists them (tables of sections 1.1 and 1.2).
ACTION = (
    "--add-caps --allow-setuid --app --apply-cgroups --bind --blkio-weight --blkio-weight-device --boot --cdi-dirs "
    "--cleanenv --compat --compat32 --contain --containall --cpu-shares --cpus --cpuset-cpus --cpuset-mems --cwd "
    "--device --disable-cache --dmtcp-launch --dmtcp-restart --dns --drop-caps --env --env-file --fakeroot "
    "--fusemount --home --hostname --ignore-fakeroot-command --ignore-subuid --ignore-userns --intel-hpu --ipc "
    "--keep-privs --memory --memory-reservation --memory-swap --mount --net --netns-path --network --network-args "
    "--no-env --no-eval --no-home --no-init --no-mount --no-pid --no-privs --no-umask --nv --nvccli "
    "--oom-kill-disable --overlay --pid --pids-limit --pwd --rocm --runscript-timeout --scratch --security "
    "--sharens --shell --underlay --unsquash --userns --uts --workdir --writable --writable-tmpfs "
    "-B -C -H -S -W -c -e -f -i -n -o -p -s -u -w").split()
REFERENCE = {
    "exec": ACTION,
    "instance start": ["--pid-file", "--dmtcp-launch", "--dmtcp-restart"],
    "instance stop": ["-a", "-F", "-s", "-t"],
    "instance list": ["-j", "-l", "-a", "-u"],
    "build": ("--arch --arch-variant --build-arg --build-arg-file --compat32 --data --disable-cache --encrypt "
              "--fakeroot --fix-perms --json --mksquashfs-args --mount --no-cleanup --notest --nv --nvccli "
              "--passphrase --pem-path --reproducible --rocm --sandbox --section --update --userns "
              "--warn-unused-build-args --writable-tmpfs -B -T -e -f -s -u").split(),
    "pull": ("--allow-unsigned --arch --authfile --dir --disable-cache --docker-login --force --library --no-https "
             "--reproducible --sandbox -F -U").split(),
    "inspect": ("--all --app --deffile --environment --helpfile --json --labels --list-apps --runscript --startscript "
                "--test -H -d -e -j -l -r -s -t").split(),
}

# option -> the behaviour test (file under tests/ :: function), or R with the argument the refusal is tried with.
MATRIX: dict[str, dict[str, str | tuple[str, str | None]]] = {
    "exec": {
        "--add-caps": (R, "CAP_NET_RAW"), "--allow-setuid": (R, None), "--app": "integration/test_build.py::"
        "test_scif_app_install_and_layout", "--apply-cgroups": (R, "/c.toml"), "--bind": f"{EXEC}::test_bind_flags",
        "-B": f"{EXEC}::test_bind_flags", "--blkio-weight": (R, "10"), "--blkio-weight-device": (R, "/dev/sda:10"),
        "--boot": (R, None), "--cdi-dirs": "integration/test_gpu_hooks_rootless.py::test_cdi_device",
        "--device": "integration/test_gpu_hooks_rootless.py::test_cdi_device",
        "--cleanenv": f"{EXEC}::test_environment_rules", "-e": f"{EXEC}::test_environment_rules",
        "--compat": f"{COMPAT}::test_compat_umask_scratch", "--compat32": (R, None),
        "--contain": f"{EXEC}::test_contain_and_containall", "-c": f"{EXEC}::test_contain_and_containall",
        "--containall": f"{EXEC}::test_contain_and_containall", "-C": f"{EXEC}::test_contain_and_containall",
        "--cpu-shares": (R, "512"),
        "--cpus": "integration/test_limits.py::test_user_in_a_delegated_subtree_gets_limits",
        "--memory": "integration/test_limits.py::test_user_in_a_delegated_subtree_gets_limits",
        "--pids-limit": "integration/test_limits.py::test_user_in_a_delegated_subtree_gets_limits",
        "--cpuset-cpus": f"{HERE}::test_cpuset_cpus_is_cpuset", "--cpuset-mems": (R, "0"),
        "--cwd": f"{HERE}::test_cwd_pwd_shell", "--pwd": f"{HERE}::test_cwd_pwd_shell",
        "--shell": f"{HERE}::test_cwd_pwd_shell", "-s": f"{HERE}::test_cwd_pwd_shell",
        "--disable-cache": f"{REGISTRY}::test_disable_cache_keeps_nothing",
        "--dmtcp-launch": (R, "x"), "--dmtcp-restart": (R, "x"), "--dns": (R, "1.1.1.1"),
        "--drop-caps": f"{COMPAT}::test_capabilities", "--no-privs": f"{COMPAT}::test_capabilities",
        "--env": f"{EXEC}::test_environment_rules", "--env-file": f"{EXEC}::test_environment_rules",
        "--fakeroot": f"{EXEC}::test_fakeroot", "-f": f"{EXEC}::test_fakeroot", "--fusemount": (R, "host:x /m"),
        "--home": f"{EXEC}::test_home_options", "-H": f"{EXEC}::test_home_options",
        "--no-home": f"{EXEC}::test_home_options",
        "--hostname": f"{EXEC}::test_uts_ipc_net_namespaces", "--uts": f"{EXEC}::test_uts_ipc_net_namespaces",
        "--ipc": f"{EXEC}::test_uts_ipc_net_namespaces", "-i": f"{EXEC}::test_uts_ipc_net_namespaces",
        "--net": f"{EXEC}::test_uts_ipc_net_namespaces", "-n": f"{EXEC}::test_uts_ipc_net_namespaces",
        "--network": f"{COMPAT}::test_network_none_and_no_eval_and_userns",
        "--no-eval": f"{COMPAT}::test_network_none_and_no_eval_and_userns",
        "--userns": f"{COMPAT}::test_network_none_and_no_eval_and_userns",
        "-u": f"{COMPAT}::test_network_none_and_no_eval_and_userns",
        "--ignore-fakeroot-command": f"{HERE}::test_accepted_options_change_nothing",
        "--underlay": f"{HERE}::test_accepted_options_change_nothing",
        "--runscript-timeout": f"{HERE}::test_accepted_options_change_nothing",
        "--ignore-subuid": f"{EXEC}::test_fakeroot_single_id_map", "--ignore-userns": (R, None),
        "--intel-hpu": (R, None), "--keep-privs": (R, None), "--memory-reservation": (R, "1G"),
        "--memory-swap": (R, "1G"), "--oom-kill-disable": (R, None), "--netns-path": (R, "/proc/1/ns/net"),
        "--network-args": (R, "portmap=80:80/tcp"), "--nvccli": (R, None), "--security": (R, "seccomp:/x"),
        "--mount": f"{COMPAT}::test_mount_option", "--no-mount": f"{COMPAT}::test_no_mount",
        "--no-env": f"{HERE}::test_no_env_and_no_pid", "--no-pid": f"{HERE}::test_no_env_and_no_pid",
        "--no-init": f"{EXEC}::test_pid_namespace_has_init_and_reaps",
        "--pid": f"{EXEC}::test_pid_namespace_has_init_and_reaps",
        "-p": f"{EXEC}::test_pid_namespace_has_init_and_reaps",
        "--no-umask": f"{COMPAT}::test_compat_umask_scratch", "--scratch": f"{COMPAT}::test_compat_umask_scratch",
        "-S": f"{COMPAT}::test_compat_umask_scratch", "--workdir": f"{COMPAT}::test_compat_umask_scratch",
        "-W": f"{COMPAT}::test_compat_umask_scratch",
        "--nv": "integration/test_gpu_hooks_rootless.py::test_nv_with_fake_driver",
        "--rocm": f"{HERE}::test_rocm_without_a_driver_warns_and_runs",
        "--overlay": f"{EXEC}::test_overlay_dir_persists", "-o": f"{EXEC}::test_overlay_dir_persists",
        "--sharens": "integration/test_join.py::test_ranks_started_together_share_one_user_namespace_and_cma_works",
        "--unsquash": f"{EXEC}::test_unsquash_fallback_uses_local_cache",
        "--writable": f"{EXEC}::test_writable_sandbox", "-w": f"{EXEC}::test_writable_sandbox",
        "--writable-tmpfs": f"{EXEC}::test_writable_tmpfs_is_discarded",
    },
    "instance start": {
        "--pid-file": f"{COMPAT}::test_instance_list_json_and_start_options",
        "--dmtcp-launch": (R, "x"), "--dmtcp-restart": (R, "x"),
    },
    "instance stop": {
        "-a": f"{STOP_ALL}", "-t": f"{STOP_ALL}",
        "-F": f"{HERE}::test_instance_stop_and_list_options", "-s": f"{HERE}::test_instance_stop_and_list_options",
    },
    "instance list": {
        "-j": f"{COMPAT}::test_instance_list_json_and_start_options",
        "-l": f"{HERE}::test_instance_stop_and_list_options", "-a": f"{HERE}::test_instance_stop_and_list_options",
        "-u": f"{HERE}::test_instance_stop_and_list_options",
    },
    "build": {
        "--arch": f"{REGISTRY}::test_build_from_registry_references",
        "--arch-variant": f"{REGISTRY}::test_build_from_registry_references",
        "--build-arg": "integration/test_build.py::test_templating_with_build_args",
        "--build-arg-file": "integration/test_build.py::test_templating_with_build_args",
        "--warn-unused-build-args": "integration/test_build.py::test_templating_with_build_args",
        "--compat32": (R, None), "--data": (R, "x"), "--encrypt": (R, None), "-e": (R, None), "--json": (R, None),
        "--no-cleanup": (R, None), "--nv": (R, None), "--nvccli": (R, None), "--rocm": (R, None),
        "--passphrase": (R, None), "--pem-path": (R, "/k.pem"), "--section": (R, "post"), "--update": (R, None),
        "-u": (R, None), "--writable-tmpfs": (R, None), "--mount": (R, "type=bind,src=/a,dst=/b"), "-B": (R, "/a"),
        "--disable-cache": f"{REGISTRY}::test_disable_cache_keeps_nothing",
        "--fakeroot": f"{HERE}::test_build_options", "-f": f"{HERE}::test_build_options",
        "--userns": f"{HERE}::test_build_options", "--fix-perms": f"{HERE}::test_build_options",
        "--mksquashfs-args": f"{HERE}::test_build_options", "--reproducible": f"{HERE}::test_build_options",
        "--notest": "integration/test_build.py::test_failing_test_fails_the_build",
        "-T": f"{HERE}::test_build_options",
        "--sandbox": f"{COMPAT}::test_build_sources", "-s": f"{COMPAT}::test_build_sources",
    },
    "pull": {
        "--allow-unsigned": f"{REGISTRY}::test_pull_name_dir_and_variables",
        "-U": f"{REGISTRY}::test_pull_name_dir_and_variables",
        "--arch": "e2e/test_pull_push.py::test_pull_docker_schema2_and_multi_arch",
        "--authfile": f"{REGISTRY}::test_authfile_and_apptainer_docker_credentials",
        "--dir": f"{REGISTRY}::test_pull_name_dir_and_variables",
        "--disable-cache": f"{REGISTRY}::test_disable_cache_keeps_nothing",
        "--docker-login": (R, None), "--library": (R, "https://library.example.org"),
        "--force": f"{REGISTRY}::test_pull_name_dir_and_variables",
        "-F": f"{REGISTRY}::test_pull_name_dir_and_variables",
        "--no-https": f"{REGISTRY}::test_pull_name_dir_and_variables",
        "--reproducible": f"{HERE}::test_build_options",
        "--sandbox": f"{REGISTRY}::test_pull_sandbox",
    },
    "inspect": {o: f"{COMPAT}::test_inspect_json_layout" for o in REFERENCE["inspect"]}
    | {"-e": f"{HERE}::test_inspect_environment_and_helpfile", "--environment":
       f"{HERE}::test_inspect_environment_and_helpfile", "-H": f"{HERE}::test_inspect_environment_and_helpfile",
       "--helpfile": f"{HERE}::test_inspect_environment_and_helpfile"},
}


def test_matrix_covers_every_option_of_the_reference():
    for command, options in REFERENCE.items():
        missing = sorted(set(options) - set(MATRIX[command]))
        assert not missing, f"{command}: options of Apptainer's with no verdict: {missing}"


def test_matrix_covers_the_reference_study_itself():
    """The options in the study's tables, read again (when it is beside the repository, as in development)."""
    study = REPO_ROOT.parent / "shared" / "reference" / "apptainer.md"
    if not study.is_file():
        pytest.skip(f"{study} is not here (a copy of tests/ without the study)")
    lines = study.read_text().splitlines()

    def options(line: str) -> set[str]:
        return {m.group(1) for tok in re.findall(r"`([^`]*)`", line)
                for m in re.finditer(r"(?<![\w-])(--?[A-Za-z][\w-]*)", tok)}

    start = next(i for i, line in enumerate(lines) if line.startswith("### 1.2"))
    action = set().union(*(options(line) for line in lines[start:start + 20]
                           if line.startswith("| ") and not line.startswith("| area")))
    assert action <= set(MATRIX["exec"]), sorted(action - set(MATRIX["exec"]))
    for command in ("build", "pull", "inspect"):
        line = next(line for line in lines if line.startswith(f"| `{command}`"))
        assert options(line) <= set(MATRIX[command]), (command, sorted(options(line) - set(MATRIX[command])))
    line = next(line for line in lines if line.startswith("| `instance start"))
    instance = set(MATRIX["instance start"]) | set(MATRIX["instance stop"]) | set(MATRIX["instance list"])
    assert options(line) <= instance


def test_every_named_behaviour_test_exists():
    for command, verdicts in MATRIX.items():
        for option, verdict in verdicts.items():
            if isinstance(verdict, tuple):
                continue
            path, _, name = verdict.partition("::")
            source = (TESTS / path).read_text()
            assert re.search(rf"^def {name}\(", source, re.M), f"{command} {option}: {verdict} does not exist"


@pytest.fixture
def apptainer(tmp_path):
    link = yurt_link(tmp_path, "apptainer")

    def run(*args, env=None, timeout=120):
        return subprocess.run([str(link), *map(str, args)], capture_output=True, text=True, cwd=tmp_path,
                              env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL, timeout=timeout,
                              check=False)

    return run


def _refused(r: subprocess.CompletedProcess, option: str) -> None:
    lines = r.stderr.splitlines()
    assert r.returncode == 255 and len(lines) == 1, (option, r.returncode, r.stderr)
    assert lines[0].startswith("yurt: error: ") and "unknown option" not in lines[0], (option, lines)
    long = option if option.startswith("--") else None
    assert (long or option) in lines[0] or any(f"--{w}" in lines[0] for w in re.findall(r"--([\w-]+)", lines[0])), lines


SHORT = {("build", "-e"): "--encrypt", ("build", "-u"): "--update", ("build", "-B"): "--bind"}


@pytest.mark.parametrize("command,option,value", [
    (c, o, v[1]) for c, opts in MATRIX.items() for o, v in opts.items() if isinstance(v, tuple)])
def test_refused_options_say_so_in_one_line(apptainer, busybox_sif, tmp_path, command, option, value):
    given = [option] if value is None else [option, value]
    if command == "exec":
        argv = ["exec", *given, busybox_sif, "true"]
    elif command == "instance start":
        argv = ["instance", "start", *given, busybox_sif, "refused"]
    elif command == "build":
        argv = ["build", *given, tmp_path / "o.sif", busybox_sif]
    else:  # pull
        argv = ["pull", *given, tmp_path / "o.sif", "docker://127.0.0.1:9/none:1"]
    r = apptainer(*argv)
    _refused(r, SHORT.get((command, option), option))
    assert not (tmp_path / "o.sif").exists()
    # run, shell and instance start take the same options (exec's refusals hold for them)
    if command == "exec" and option in ("--add-caps", "--boot", "--security"):
        _refused(apptainer("run", *given, busybox_sif), option)
        _refused(apptainer("shell", *given, busybox_sif), option)


# --- behaviour of the options no other test covers --------------------------------------------------


def test_cwd_pwd_shell(apptainer, busybox_sif):
    assert apptainer("exec", "--cwd", "/etc", busybox_sif, "pwd").stdout == "/etc\n"
    assert apptainer("exec", "--pwd", "/usr", busybox_sif, "pwd").stdout == "/usr\n"
    for opt in ("-s", "--shell"):
        r = apptainer("shell", opt, "/bin/ash", busybox_sif, "-c", "echo $0")
        assert r.returncode == 0 and r.stdout.strip().endswith("ash"), (opt, r.stdout, r.stderr)


def test_cpuset_cpus_is_cpuset(apptainer, busybox_sif):
    r = apptainer("exec", "--cpuset-cpus", "0", busybox_sif, "grep", "Cpus_allowed_list", "/proc/self/status")
    # applied through a cgroup (needs one delegated to the user), or the one clear line saying why not
    assert (r.returncode == 0 and r.stdout.split()[-1] == "0") or (
        r.returncode == 255 and r.stderr.startswith("yurt: error: ") and "cpuset" in r.stderr), r


def test_accepted_options_change_nothing(apptainer, busybox_sif):
    for opts in (["--underlay"], ["--runscript-timeout", "5m"], ["--ignore-fakeroot-command"]):
        r = apptainer("exec", *opts, busybox_sif, "echo", "ran")
        assert r.returncode == 0 and r.stdout == "ran\n" and r.stderr == "", (opts, r)


def test_no_env_and_no_pid(apptainer, busybox_sif):
    r = apptainer("exec", "--no-env", "FOO,BAZ", busybox_sif, "sh", "-c", "echo $FOO-$BAR-$BAZ",
                  env={"FOO": "1", "BAR": "2", "BAZ": "3"})
    assert r.stdout == "-2-\n"
    assert int(apptainer("exec", "-C", busybox_sif, "sh", "-c", "echo $$").stdout) <= 2
    r = apptainer("exec", "-C", "--no-pid", busybox_sif, "sh", "-c", "echo $$; echo foo=$FOO", env={"FOO": "1"})
    pid, foo = r.stdout.split()
    assert int(pid) > 2 and foo == "foo="  # the rest of --containall stays


def test_rocm_without_a_driver_warns_and_runs(apptainer, busybox_sif):
    r = apptainer("exec", "--rocm", busybox_sif, "echo", "ok")
    assert r.returncode == 0 and r.stdout == "ok\n"
    assert r.stderr == "" or r.stderr.startswith("yurt: warning: --rocm:")


def test_instance_stop_and_list_options(apptainer, busybox_sif, tmp_path):
    env = {"YURT_RUNTIMEDIR": str(tmp_path / "run")}
    me = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    try:
        for name in ("a", "b"):
            assert apptainer("instance", "start", busybox_sif, name, env=env).returncode == 0
        out = apptainer("instance", "list", "-l", env=env).stdout.splitlines()
        assert out[0].split() == ["INSTANCE", "NAME", "PID", "LOGS"] and any(line.endswith("a.err") for line in out)
        assert {json.loads(apptainer("instance", "list", "-a", "-u", me, "-j", env=env).stdout)["instances"][i]
                ["instance"] for i in (0, 1)} == {"a", "b"}
        r = apptainer("instance", "list", "-u", "root", env=env)
        assert r.returncode == 255 and "--user root" in r.stderr
        r = apptainer("instance", "stop", "-s", "KILL", "a", env=env)
        assert r.returncode == 0
        r = apptainer("instance", "stop", "-F", "b", env=env)
        assert r.returncode == 0
        assert json.loads(apptainer("instance", "list", "-j", env=env).stdout) == {"instances": []}
    finally:
        apptainer("instance", "stop", "--all", env=env)


def test_build_options(apptainer, busybox_rootfs, tmp_path):
    recipe = tmp_path / "r.def"
    recipe.write_text(f"Bootstrap: localimage\nFrom: {busybox_rootfs}\n%post\n  mkdir /locked && chmod 0500 /locked\n"
                      "%test\n  exit 1\n")
    r = apptainer("build", "-f", "--userns", "-T", "--mksquashfs-args", "-comp gzip", tmp_path / "a.sif", recipe,
                  timeout=300)
    assert r.returncode == 0, r.stderr  # -T: the failing %test is not run
    assert b"gzip" in subprocess.run(["unsquashfs", "-s", "-o", str(_squashfs_offset(tmp_path / "a.sif")),
                                      str(tmp_path / "a.sif")], capture_output=True, check=False).stdout
    assert apptainer("build", tmp_path / "b.sif", recipe, timeout=300).returncode != 0  # %test runs without -T
    r = apptainer("build", "--reproducible", tmp_path / "c.sif", recipe)
    assert r.returncode == 255 and "SOURCE_DATE_EPOCH" in r.stderr
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    for out in ("d1.sif", "d2.sif"):
        assert apptainer("build", "-T", "--reproducible", tmp_path / out, recipe, env=env, timeout=300).returncode == 0
    assert (tmp_path / "d1.sif").read_bytes() == (tmp_path / "d2.sif").read_bytes()
    r = apptainer("pull", "--reproducible", tmp_path / "p.sif", "docker://127.0.0.1:9/x:1")
    assert r.returncode == 255 and "SOURCE_DATE_EPOCH" in r.stderr
    sbx = tmp_path / "sbx"
    assert apptainer("build", "-T", "--sandbox", "--fix-perms", sbx, recipe, timeout=300).returncode == 0
    assert (sbx / "locked").stat().st_mode & 0o700 == 0o700


def _squashfs_offset(sif: Path) -> int:
    data = sif.read_bytes()
    return data.index(b"hsqs")


def test_inspect_environment_and_helpfile(apptainer, busybox_rootfs, tmp_path):
    import shutil

    root = tmp_path / "img"
    shutil.copytree(busybox_rootfs, root, symlinks=True)
    env = root / ".singularity.d/env"
    env.mkdir(parents=True, exist_ok=True)
    (env / "90-environment.sh").write_text("export GREETING=hi\n")
    (root / ".singularity.d/runscript.help").write_text("How to use it.\n")
    for opts in (["-e"], ["--environment"]):
        doc = json.loads(apptainer("inspect", "--json", *opts, root).stdout)
        assert doc["data"]["attributes"]["environment"] == {"/.singularity.d/env/90-environment.sh":
                                                            "export GREETING=hi"}
    assert apptainer("inspect", "-H", root).stdout == "How to use it.\n"
    assert apptainer("inspect", "--helpfile", "--json", root).stdout.count("How to use it.") == 1
