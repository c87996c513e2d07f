"""ActionRequest -> ContainerSpec, as plain data (no privileges, no processes)."""

from __future__ import annotations

import json
import os

import pytest

from yurt.errors import ImageError, UsageError
from yurt.image.source import Image
from yurt.runtime import plan as plan_mod
from yurt.runtime.environment import DEFAULT_PATH
from yurt.runtime.plan import ActionRequest, Bind, parse_binds, plan_container
from yurt.spec import NS_IPC, NS_MOUNT, NS_NET, NS_PID, NS_USER, NS_UTS, ContainerSpec, IDMapping

IS_ROOT = os.geteuid() == 0
FAKE_UID = 4242
not_root = pytest.mark.skipif(IS_ROOT, reason="result differs when running as real root")
only_root = pytest.mark.skipif(not IS_ROOT, reason="result differs when not running as root")


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "home" / "alice"
    h.mkdir(parents=True)
    return str(h)


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    d = tmp_path / "work"
    d.mkdir()
    monkeypatch.chdir(d)
    return str(d)


@pytest.fixture
def host_env(home):
    return {
        "HOME": home,
        "PATH": "/host/bin",
        "LD_LIBRARY_PATH": "/host/lib",
        "USER": "alice",
        "TERM": "xterm",
        "SLURM_JOB_ID": "42",
        "YURTENV_FROMHOST": "yes",
    }


@pytest.fixture
def as_user(monkeypatch):
    """Pretend to be an unprivileged user while planning (plan_container only reads the ids)."""
    monkeypatch.setattr(plan_mod.os, "getuid", lambda: FAKE_UID)
    monkeypatch.setattr(plan_mod.os, "geteuid", lambda: FAKE_UID)
    monkeypatch.setattr(plan_mod.os, "getgid", lambda: FAKE_UID)


def image(**objects):
    return Image(path="/img", kind="sandbox", objects=dict(objects))


def req(action="exec", args=("true",), **kw):
    kw.setdefault("image", image())
    return ActionRequest(action=action, args=list(args), **kw)


def plan(host_env, action="exec", args=("true",), **kw):
    return plan_container(req(action, args, **kw), host_env=host_env)


def dests(spec):
    return [m.destination for m in spec.mounts]


def mount(spec, dest):
    found = [m for m in spec.mounts if m.destination == dest]
    assert len(found) == 1, (dest, dests(spec))
    return found[0]


def oci_image(**config):
    return image(**{"oci-config.json": json.dumps({"config": config}).encode()})


# ------------------------------------------------------------------ parse_binds


def test_bind_src_only():
    assert parse_binds(["/data"]) == [Bind("/data", "/data", False)]


def test_bind_src_dst():
    assert parse_binds(["/data:/mnt"]) == [Bind("/data", "/mnt", False)]


def test_bind_src_dst_ro_rw():
    assert parse_binds(["/data:/mnt:ro"]) == [Bind("/data", "/mnt", True)]
    assert parse_binds(["/data:/mnt:rw"]) == [Bind("/data", "/mnt", False)]


def test_bind_ro_shorthand():
    assert parse_binds(["/data:ro"]) == [Bind("/data", "/data", True)]
    assert parse_binds(["/data:rw"]) == [Bind("/data", "/data", False)]


def test_bind_empty_destination_means_source():
    assert parse_binds(["/data::ro"]) == [Bind("/data", "/data", True)]


def test_bind_comma_list_and_repeats():
    assert parse_binds(["/a,/b:/c:ro", " /d , /e:ro", "/f"]) == [
        Bind("/a", "/a"), Bind("/b", "/c", True), Bind("/d", "/d"), Bind("/e", "/e", True), Bind("/f", "/f"),
    ]


def test_bind_empty():
    """An empty value binds nothing (-B "$EXTRA", as in Apptainer); an empty entry in a list is an error."""
    assert parse_binds([]) == []
    assert parse_binds(["", "  "]) == []


@pytest.mark.parametrize("spec", [":", ",,,", ",", "a,,b", "a,", " , ", ":/mnt", "::ro"])
def test_bind_malformed_is_a_usage_error(spec):
    """-B : and -B ,,, used to bind the working directory or nothing, silently."""
    with pytest.raises(UsageError, match="bad bind"):
        parse_binds([spec])


def test_bind_relative_source_made_absolute(cwd):
    assert parse_binds(["data:/mnt"]) == [Bind(os.path.join(cwd, "data"), "/mnt")]
    assert parse_binds(["./a/../b:/mnt:ro"]) == [Bind(os.path.join(cwd, "b"), "/mnt", True)]


def test_bind_relative_source_without_destination(cwd):
    assert parse_binds(["data"]) == [Bind(os.path.join(cwd, "data"), os.path.join(cwd, "data"))]
    assert parse_binds(["data:ro"]) == [Bind(os.path.join(cwd, "data"), os.path.join(cwd, "data"), True)]


def test_bind_relative_destination_rejected():
    with pytest.raises(UsageError):
        parse_binds(["/data:mnt"])


@pytest.mark.parametrize("bad", ["/a:/b:xx", "/a:/b:RO", "/a:/b:ro:extra", "/a:/b:ro,/c:/d:nope"])
def test_bind_bad_option(bad):
    with pytest.raises(UsageError):
        parse_binds([bad])


def test_bind_normpath():
    assert parse_binds(["/a//b/./c/../d/:/x/y/../z/"]) == [Bind("/a/b/d", "/x/z")]


def test_bind_leading_double_slash_normalised(host_env, cwd):
    assert parse_binds(["/h://data/x"]) == [Bind("/h", "/data/x")]
    spec = plan(host_env, binds=["/h1://data/x", "/h2:/data"])
    user = [d for d in dests(spec) if d.endswith("data") or d.endswith("data/x")]
    assert user == ["/data", "/data/x"]


# ------------------------------------------------------------------ mount order


def test_default_mount_order(host_env, cwd, home):
    spec = plan(host_env, binds=["/srv/b:/zzz", "/srv/a:/data/sub:ro", "/srv/c:/data"])
    d = dests(spec)
    head = ["/dev", "/etc/localtime", "/etc/hosts", "/proc", "/sys", home, "/tmp", "/var/tmp"]
    assert d[:len(head)] == head
    ident = [] if IS_ROOT else ["/etc/passwd", "/etc/group"]
    assert d[len(head):] == [*ident, "/etc/resolv.conf", "/data", "/data/sub", "/zzz", cwd]
    assert mount(spec, "/dev").kind == "bind" and mount(spec, "/dev").source == "/dev"
    assert mount(spec, "/proc").kind == "bind"
    assert mount(spec, "/sys").kind == "bind"
    h = mount(spec, home)
    assert (h.kind, h.source) == ("bind", home)
    for t in ("/tmp", "/var/tmp"):
        assert (mount(spec, t).kind, mount(spec, t).source, mount(spec, t).optional) == ("bind", t, True)
    for f in ("/etc/localtime", "/etc/hosts", "/etc/resolv.conf"):
        assert mount(spec, f).readonly and mount(spec, f).optional
    assert mount(spec, "/data/sub").options == ["ro"]
    assert mount(spec, "/data").options == []
    last = spec.mounts[-1]
    assert (last.destination, last.kind, last.source) == (cwd, "bind", cwd)
    assert "if-not-visible" in last.options and last.optional
    assert spec.process.cwd == cwd
    assert spec.process.fallback_cwd == home


def test_user_binds_sorted_parents_first(host_env, cwd):
    spec = plan(host_env, binds=["/s:/a/b/c", "/s:/a", "/s:/a-b", "/s:/a/b"])
    user = [m.destination for m in spec.mounts if m.source == "/s"]
    assert user == ["/a", "/a-b", "/a/b", "/a/b/c"]


def test_pwd_gives_cwd_without_cwd_mount(host_env, cwd):
    spec = plan(host_env, pwd="/opt")
    assert spec.process.cwd == "/opt"
    assert cwd not in dests(spec)


@not_root
def test_passwd_group_generated(host_env, cwd, home):
    spec = plan(host_env)
    pw, gr = mount(spec, "/etc/passwd"), mount(spec, "/etc/group")
    assert (pw.kind, gr.kind) == ("passwd", "group")
    assert f"uid={os.getuid()}" in pw.options
    assert f"home={home}" in pw.options


def test_passwd_group_generated_for_simulated_user(host_env, cwd, home, as_user):
    spec = plan(host_env)
    pw = mount(spec, "/etc/passwd")
    assert pw.kind == "passwd"
    assert f"uid={FAKE_UID}" in pw.options and f"gid={FAKE_UID}" in pw.options
    assert f"home={home}" in pw.options
    assert mount(spec, "/etc/group").kind == "group"
    assert dests(spec).index("/etc/group") < dests(spec).index("/etc/resolv.conf")


# ------------------------------------------------------------------ contain & namespaces


def test_contain(host_env, cwd, home):
    spec = plan(host_env, contain=True)
    assert mount(spec, "/dev").kind == "devdir"
    assert mount(spec, "/tmp").kind == "tmpfs" and mount(spec, "/tmp").options == ["mode=1777"]
    assert mount(spec, "/var/tmp").kind == "tmpfs"
    h = mount(spec, home)
    assert h.kind == "tmpfs" and h.source is None and "mode=0700" in h.options
    assert cwd not in dests(spec)
    assert spec.process.cwd == home
    assert NS_PID not in spec.namespaces and NS_IPC not in spec.namespaces
    assert spec.process.env["SLURM_JOB_ID"] == "42"


def test_contain_with_home_binds_home(host_env, cwd, tmp_path):
    spec = plan(host_env, contain=True, home=f"{tmp_path}:/home/me")
    h = mount(spec, "/home/me")
    assert (h.kind, h.source) == ("bind", str(tmp_path))
    assert spec.process.cwd == "/home/me"
    assert spec.process.env["HOME"] == "/home/me"


def test_contain_workdir_backs_tmp(host_env, cwd, tmp_path):
    wd = tmp_path / "wd"
    spec = plan(host_env, contain=True, workdir=str(wd))
    assert (mount(spec, "/tmp").kind, mount(spec, "/tmp").source) == ("bind", str(wd / "tmp"))
    assert (mount(spec, "/var/tmp").kind, mount(spec, "/var/tmp").source) == ("bind", str(wd / "var_tmp"))
    assert (wd / "tmp").is_dir() and (wd / "var_tmp").is_dir()


def test_containall(host_env, cwd, home):
    spec = plan(host_env, containall=True)
    assert NS_PID in spec.namespaces and NS_IPC in spec.namespaces
    assert mount(spec, "/dev").kind == "devdir"
    assert mount(spec, "/proc").kind == "proc"
    assert mount(spec, home).kind == "tmpfs"
    env = spec.process.env
    assert env["LANG"] == "C"
    assert "SLURM_JOB_ID" not in env
    assert env["TERM"] == "xterm"
    assert env["PATH"] == DEFAULT_PATH
    assert env["FROMHOST"] == "yes"  # injected variables survive --cleanenv


def test_cleanenv(host_env, cwd):
    env = plan(host_env, cleanenv=True).process.env
    assert "SLURM_JOB_ID" not in env and env["LANG"] == "C"


def test_pid(host_env, cwd):
    spec = plan(host_env, pid=True)
    assert NS_PID in spec.namespaces
    p = mount(spec, "/proc")
    assert (p.kind, p.source) == ("proc", None)
    assert mount(spec, "/dev").kind == "bind"


def test_ipc(host_env, cwd):
    assert NS_IPC in plan(host_env, ipc=True).namespaces


def test_net(host_env, cwd):
    spec = plan(host_env, net=True)
    assert NS_NET in spec.namespaces
    assert (mount(spec, "/sys").kind, mount(spec, "/sys").source) == ("sysfs", None)


def test_hostname_adds_uts(host_env, cwd):
    spec = plan(host_env, hostname="node1")
    assert NS_UTS in spec.namespaces
    assert spec.hostname == "node1"
    assert spec.to_oci()["hostname"] == "node1"


def test_uts(host_env, cwd):
    spec = plan(host_env, uts=True)
    assert NS_UTS in spec.namespaces and spec.hostname is None


def test_default_namespaces_minimal(host_env, cwd):
    spec = plan(host_env)
    for ns in (NS_PID, NS_IPC, NS_UTS, NS_NET):
        assert ns not in spec.namespaces
    assert NS_MOUNT in spec.namespaces


@only_root
def test_real_root_no_user_namespace(host_env, cwd):
    spec = plan(host_env)
    assert spec.namespaces == [NS_MOUNT]
    assert spec.uid_mappings == [] and spec.process.uid == 0


@not_root
def test_user_namespace_true_identity(host_env, cwd):
    spec = plan(host_env)
    assert spec.namespaces[:2] == [NS_USER, NS_MOUNT]
    assert spec.uid_mappings == [IDMapping(os.getuid(), os.getuid(), 1)]
    assert spec.process.uid == os.getuid()


def test_user_namespace_true_identity_simulated(host_env, cwd, as_user):
    spec = plan(host_env)
    assert spec.namespaces[:2] == [NS_USER, NS_MOUNT]
    assert spec.uid_mappings == [IDMapping(FAKE_UID, FAKE_UID, 1)]
    assert spec.gid_mappings == [IDMapping(FAKE_UID, FAKE_UID, 1)]
    assert (spec.process.uid, spec.process.gid) == (FAKE_UID, FAKE_UID)


# ------------------------------------------------------------------ home


def test_no_home(host_env, cwd, home):
    spec = plan(host_env, no_home=True)
    assert home not in dests(spec)
    assert spec.process.env["HOME"] == home


def test_home_src_dst(host_env, cwd, tmp_path):
    spec = plan(host_env, home=f"{tmp_path}:/home/u")
    h = mount(spec, "/home/u")
    assert (h.kind, h.source) == ("bind", str(tmp_path))
    assert host_env["HOME"] not in dests(spec)
    assert spec.process.env["HOME"] == "/home/u"


def test_home_src_only_relative(host_env, cwd):
    spec = plan(host_env, home="myhome")
    path = os.path.join(cwd, "myhome")
    assert (mount(spec, path).kind, mount(spec, path).source) == ("bind", path)


def test_home_relative_destination_rejected(host_env, cwd, tmp_path):
    with pytest.raises(UsageError):
        plan(host_env, home=f"{tmp_path}:rel")


@not_root
def test_fakeroot(host_env, cwd, home):
    spec = plan(host_env, fakeroot=True)
    assert (spec.process.uid, spec.process.gid) == (0, 0)
    assert mount(spec, "/root").source == home
    assert spec.process.env["HOME"] == "/root"
    assert "/etc/passwd" not in dests(spec)
    assert spec.uid_mappings[0] == IDMapping(0, os.getuid(), 1)


def test_fakeroot_simulated(host_env, cwd, home, as_user):
    spec = plan(host_env, fakeroot=True, contain=True)
    assert (spec.process.uid, spec.process.gid) == (0, 0)
    h = mount(spec, "/root")
    assert h.kind == "tmpfs" and "uid=0" in h.options
    assert spec.process.env["HOME"] == "/root"
    assert spec.process.cwd == "/root"
    assert "/etc/passwd" not in dests(spec) and "/etc/group" not in dests(spec)
    assert spec.uid_mappings[0] == IDMapping(0, FAKE_UID, 1)
    assert spec.gid_mappings[0] == IDMapping(0, FAKE_UID, 1)


@only_root
def test_fakeroot_as_real_root_changes_nothing(host_env, cwd, home):
    spec = plan(host_env, fakeroot=True)
    assert spec.process.uid == 0
    assert mount(spec, home).source == home


# ------------------------------------------------------------------ actions


def test_exec_args(host_env, cwd):
    assert plan(host_env, "exec", ["ls", "-l"]).process.args == ["ls", "-l"]


def test_exec_without_args(host_env, cwd):
    with pytest.raises(UsageError):
        plan(host_env, "exec", [])


def test_run_args(host_env, cwd):
    assert plan(host_env, "run", []).process.args == ["/.singularity.d/runscript"]
    assert plan(host_env, "run", ["a", "-b"]).process.args == ["/.singularity.d/runscript", "a", "-b"]


def test_shell_default_and_custom(host_env, cwd):
    spec = plan(host_env, "shell", [])
    assert spec.process.args[:2] == ["/bin/sh", "-c"]
    assert spec.process.env["PS1"] == "Yurt> "
    assert plan(host_env, "shell", ["-x"], shell="/bin/zsh").process.args == ["/bin/zsh", "-x"]


def test_unknown_action(host_env, cwd):
    with pytest.raises(UsageError):
        plan(host_env, "frobnicate", ["x"])


def test_annotations(host_env, cwd):
    spec = plan(host_env, "run", [])
    assert spec.annotations["yurt.action"] == "run"
    assert spec.annotations["yurt.image"] == "/img"
    assert "yurt.run.fallback" not in spec.annotations


# ------------------------------------------------------------------ environment


def test_environment(host_env, cwd, home):
    env = plan(host_env).process.env
    assert env["PATH"] == DEFAULT_PATH
    assert "LD_LIBRARY_PATH" not in env
    assert env["HOME"] == home
    assert env["SLURM_JOB_ID"] == "42"
    assert env["FROMHOST"] == "yes"
    assert "YURTENV_FROMHOST" not in env
    assert env["YURT_CONTAINER"] == env["APPTAINER_CONTAINER"] == env["SINGULARITY_CONTAINER"] == "/img"
    assert env["YURT_NAME"] == env["APPTAINER_NAME"] == env["SINGULARITY_NAME"] == "img"


def test_env_injection_precedence(host_env, cwd, tmp_path):
    f = tmp_path / "envfile"
    f.write_text("FROMHOST=file\nA=file\nB=file\n")
    spec = plan(host_env, env_file=str(f), env=["B=arg,C=x,y"])
    env = spec.process.env
    assert (env["FROMHOST"], env["A"], env["B"], env["C"]) == ("file", "file", "arg", "x,y")
    late = spec.extras.inject_env
    assert (late["FROMHOST"], late["A"], late["B"], late["C"]) == ("file", "file", "arg", "x,y")


def test_bad_env_arg(host_env, cwd):
    with pytest.raises(UsageError):
        plan(host_env, env=["nope"])


def test_extras(host_env, cwd):
    spec = plan(host_env, image=image(environment=b"export X=1\n"), writable_tmpfs=True, writable_tmpfs_size=128,
                overlays=["/ov"], no_init=True)
    ex = spec.extras
    assert ex.env_scripts and ex.env_script_text == "export X=1\n"
    assert ex.writable_tmpfs and ex.session_size_mb == 128
    assert ex.overlays == ["/ov"] and ex.init is False


# ------------------------------------------------------------------ OCI image config


def test_oci_env_is_image_env(host_env, cwd):
    img = oci_image(Env=["PATH=/opt/bin:/usr/bin", "LANG=C.UTF-8", "SLURM_JOB_ID=img", "FROMHOST=img", "NOEQ"])
    env = plan(host_env, image=img).process.env
    assert env["PATH"] == "/opt/bin:/usr/bin"
    assert env["LANG"] == "C.UTF-8"
    assert env["SLURM_JOB_ID"] == "img"  # image overrides host
    assert env["FROMHOST"] == "yes"  # injected overrides image
    assert "NOEQ" not in env


def test_oci_config_without_config_member(host_env, cwd):
    img = image(**{"oci-config.json": json.dumps({"Env": ["X=1"]}).encode()})
    assert plan(host_env, image=img).process.env["X"] == "1"


def test_oci_fallback_entrypoint_cmd(host_env, cwd):
    img = oci_image(Entrypoint=["/entry", "-v"], Cmd=["serve", "--port=1"], WorkingDir="/srv")
    spec = plan(host_env, "run", [], image=img)
    assert json.loads(spec.annotations["yurt.run.fallback"]) == ["/entry", "-v", "serve", "--port=1"]
    assert spec.process.args == ["/.singularity.d/runscript"]
    assert spec.process.cwd == "/srv"


def test_oci_fallback_args_replace_cmd(host_env, cwd):
    img = oci_image(Entrypoint=["/entry"], Cmd=["default"])
    spec = plan(host_env, "run", ["mine", "--x"], image=img)
    assert json.loads(spec.annotations["yurt.run.fallback"]) == ["/entry", "mine", "--x"]


def test_oci_fallback_cmd_only(host_env, cwd):
    spec = plan(host_env, "run", [], image=oci_image(Cmd=["/bin/sh"]))
    assert json.loads(spec.annotations["yurt.run.fallback"]) == ["/bin/sh"]


def test_oci_workingdir_only_for_run(host_env, cwd):
    img = oci_image(WorkingDir="/srv")
    assert plan(host_env, "exec", ["true"], image=img).process.cwd == cwd
    assert plan(host_env, "shell", [], image=img).process.cwd == cwd
    assert plan(host_env, "run", [], image=img).process.cwd == "/srv"
    assert plan(host_env, "run", [], image=img, pwd="/opt").process.cwd == "/opt"


# ------------------------------------------------------------------ OCI round trip


@pytest.mark.parametrize("kw", [{}, {"containall": True, "net": True, "hostname": "h",
                                     "binds": ["/a:/b:ro", "/c"]}])
def test_to_oci_from_oci_round_trip(host_env, cwd, kw):
    spec = plan(host_env, "run", ["x"], image=oci_image(Entrypoint=["/e"], Env=["A=b=c"]), **kw)
    doc = json.loads(json.dumps(spec.to_oci()))
    back = ContainerSpec.from_oci(doc)
    assert back.process.args == spec.process.args
    assert back.process.env == spec.process.env
    assert (back.process.cwd, back.process.uid, back.process.gid) == (
        spec.process.cwd, spec.process.uid, spec.process.gid)
    assert back.namespaces == spec.namespaces
    assert back.uid_mappings == spec.uid_mappings and back.gid_mappings == spec.gid_mappings
    assert [(m.destination, m.kind, m.source, m.options) for m in back.mounts] == [
        (m.destination, m.kind, m.source, m.options) for m in spec.mounts]
    assert back.hostname == spec.hostname
    assert back.annotations == spec.annotations
    assert back.to_oci() == doc


@pytest.mark.parametrize("cwd,bound", [("/", False), ("/usr", False), ("/usr/local/src", False), ("/etc", False),
                                       ("/home/u/proj", True), ("/scratch/job", True), ("/var/tmp/x", False),
                                       ("/opt/app", True), ("/usrlocal", True)])
def test_binds_cwd(cwd, bound):
    from yurt.runtime.plan import binds_cwd

    assert binds_cwd(cwd) is bound


# ------------------------------------------------------------------ hostile images and binds


@pytest.mark.parametrize("config, field", [
    ({"Env": "PATH=/bin"}, "Env"), ({"Cmd": {"a": 1}}, "Cmd"), ({"WorkingDir": 5}, "WorkingDir"),
    ({"Entrypoint": ["/a\u0000b"]}, r"Entrypoint\[0\]"), ({"Labels": [1]}, "Labels"),
])
def test_oci_config_with_wrong_types_is_one_image_error(host_env, cwd, config, field):
    with pytest.raises(ImageError, match=f"/img: the OCI config object: {field} "):
        plan(host_env, "run", [], image=oci_image(**config))


@pytest.mark.parametrize("raw", [b"[" * 100000, b"{bad", b"\xff"])
def test_oci_config_that_is_not_json_is_one_image_error(host_env, cwd, raw):
    with pytest.raises(ImageError, match="/img: the OCI config object: "):
        plan(host_env, image=image(**{"oci-config.json": raw}))


def test_oci_env_with_an_empty_name_is_skipped(host_env, cwd):
    env = plan(host_env, image=oci_image(Env=["=x", "A=1"])).process.env
    assert "" not in env and env["A"] == "1"


@pytest.mark.parametrize("dst", ["/", "/proc", "/sys", "/dev", "/proc/", "//proc", "/proc/sys/kernel", "/proc/1/attr",
                                 "/sys/kernel/debug", "/sys/fs/cgroup", "/x/../proc"])
def test_binds_hiding_kernel_file_systems_are_refused(host_env, cwd, dst):
    with pytest.raises(UsageError, match="would hide"):
        plan(host_env, binds=[f"/data:{dst}"])


@pytest.mark.parametrize("dst", ["/dev/shm", "/dev/infiniband", "/proc/meminfo", "/proc/cpuinfo", "/tmp", "/var/tmp",
                                 "/procedures", "/system"])
def test_binds_below_dev_and_lxcfs_proc_files_are_allowed(host_env, cwd, dst):
    assert dst in dests(plan(host_env, binds=[f"/data:{dst}"]))


def test_home_destination_over_kernel_file_systems_is_refused(host_env, cwd):
    with pytest.raises(UsageError, match="--home destination /sys would hide"):
        plan(host_env, home="/data:/sys")
