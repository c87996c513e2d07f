"""The Python API (``yurt.api``, also ``yurt.run``...), as the unprivileged user, against real containers.

Everything goes through the installed package and the installed ``yurt`` command it finds: busybox
containers (a directory and a SIF built here), an OCI layout written here and pulled, a definition
file built, instances started and stopped.  The errors are checked against what the command line
prints for the same mistake.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import sysconfig
import tarfile
import time
from pathlib import Path

import pytest
from installed_yurt import yurt_argv

import yurt
from yurt import api
from yurt.errors import BuildError, ImageError, PayloadNotFound, UsageError, YurtError

pytestmark = [pytest.mark.userns]

if os.geteuid() == 0:
    pytest.skip("rootless tests run as the unprivileged test user", allow_module_level=True)


@pytest.fixture(autouse=True)
def private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Instances and caches of this test only (the API reads them from this process's environment)."""
    monkeypatch.setenv("YURT_RUNTIMEDIR", str(tmp_path / "run"))
    monkeypatch.setenv("YURT_CACHEDIR", str(tmp_path / "cache"))


# --------------------------------------------------------------------------- the package and its command


def test_import_yurt_loads_neither_the_api_nor_subprocess(tmp_path: Path) -> None:
    """``yurt exec`` imports ``yurt`` and ``yurt.cli`` once per MPI rank: the API must cost it nothing."""
    code = """if True:
        import sys
        import yurt, yurt.cli, yurt.errors
        loaded = sorted(m for m in ("yurt.api", "subprocess", "typing", "dataclasses", "threading")
                        if m in sys.modules)
        assert not loaded, loaded
        assert "run" in dir(yurt) and "Instance" in dir(yurt)
        run = yurt.run                      # first use loads the API
        assert "yurt.api" in sys.modules and run is sys.modules["yurt.api"].run
        assert yurt.exec is yurt.execute and yurt.api.Instance is yurt.Instance
        try:
            yurt.no_such_name
        except AttributeError as e:
            assert "no_such_name" in str(e)
        else:
            raise AssertionError("yurt.no_such_name did not raise")
        print("ok")
    """
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == "ok\n", r.stderr


def test_the_api_runs_the_yurt_command_installed_with_it() -> None:
    """Installed from a wheel (CI), the API runs that installation's ``bin/yurt``, the same script as the
    tests run; an editable or source-tree yurt runs ``yurt.cli`` from the directory it was imported from."""
    command = api.yurt_command()
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(yurt.__file__)))
    installed = os.path.realpath(package_parent) in {os.path.realpath(sysconfig.get_path(k))
                                                     for k in ("purelib", "platlib")}
    if os.environ.get("YURT_TEST_WHEEL"):
        assert installed, f"CI installs the wheel, yet yurt was imported from {package_parent}"
    if installed:
        assert list(command) == yurt_argv(), (command, yurt_argv())
        with open(command[0], "rb") as f:
            python = f.readline()[2:].decode().strip()
        r = subprocess.run([python, "-c", "import yurt; print(yurt.__file__)"], capture_output=True, text=True,
                           timeout=60, cwd="/")
        assert r.stdout.strip() == yurt.__file__  # the script's interpreter imports this very package
    else:
        assert command[:3] == (sys.executable, "-P", "-c") and repr(package_parent) in command[3]
    from yurt.api.process import run_yurt

    assert run_yurt(["version"]).stdout == f"yurt version {yurt.__version__}\n"


# --------------------------------------------------------------------------- run / exec


def test_execute_returns_output_and_the_programs_status(busybox_rootfs: Path) -> None:
    r = yurt.execute(busybox_rootfs, ["sh", "-c", "echo out; echo err >&2; id -u; exit 3"])
    assert isinstance(r, api.Result)
    assert (r.returncode, r.stdout, r.stderr) == (3, f"out\n{os.getuid()}\n", "err\n")
    assert r.args[:len(api.yurt_command())] == list(api.yurt_command())
    assert r.args[-6:] == ["exec", "--", str(busybox_rootfs), "sh", "-c", "echo out; echo err >&2; id -u; exit 3"]
    assert yurt.exec(busybox_rootfs, "echo hello world").stdout == "hello world\n"  # a string is split, as spython
    r = yurt.execute(busybox_rootfs, ["cat"], input=b"\xff\xfe not utf-8\n")
    assert r.stdout_bytes == b"\xff\xfe not utf-8\n"  # bytes kept exactly
    # the runscript of make-busybox-rootfs runs its arguments
    assert yurt.run(busybox_rootfs, ["sh", "-c", "echo ran"]).stdout.endswith("ran\n")


def test_environment_binds_and_working_directory(busybox_rootfs: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_text("input\n")
    out = tmp_path / "out"
    out.mkdir()
    script = 'echo "$A|$B|$HOST_ONLY"; cat /data/in.txt; echo written > /out/x; ' \
             'touch /data/nope 2>/dev/null || echo read-only; pwd'
    r = yurt.execute(busybox_rootfs, ["sh", "-c", script], env={"A": "a,b=c d", "B": "two words"},
                     binds=[f"{data}:/data:ro", (out, "/out")], pwd="/out", cleanenv=True,
                     host_env={**os.environ, "HOST_ONLY": "leaks"}, check=True)
    assert r.stdout == "a,b=c d|two words|\ninput\nread-only\n/out\n"  # cleanenv: the host variable is gone
    assert (out / "x").read_text() == "written\n"
    r = yurt.execute(busybox_rootfs, ["sh", "-c", "echo $HOST_ONLY"], host_env={**os.environ, "HOST_ONLY": "seen"})
    assert r.stdout == "seen\n"
    # a relative image and bind resolve against cwd, as on the command line
    r = yurt.execute(busybox_rootfs.name, ["cat", "/d/in.txt"], binds=f"{data}:/d",
                     cwd=busybox_rootfs.parent, check=True)
    assert r.stdout == "input\n"
    with pytest.raises(UsageError, match="no room for ':'"):
        yurt.execute(busybox_rootfs, ["true"], binds=[(tmp_path / "a:b", "/x")])
    with pytest.raises(UsageError, match="bad environment variable name"):
        yurt.execute(busybox_rootfs, ["true"], env={"A-B": "1"})
    with pytest.raises(TypeError, match="bindz"):
        yurt.execute(busybox_rootfs, ["true"], bindz=["/x"])  # type: ignore[call-arg]


def test_explicit_false_overrides_the_environment(busybox_rootfs: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """None leaves a flag to YURT_<FLAG> and the config, as the command line does; False says no."""
    monkeypatch.setenv("YURT_CLEANENV", "1")
    monkeypatch.setenv("MARKER", "here")
    assert yurt.execute(busybox_rootfs, ["sh", "-c", "echo [$MARKER]"]).stdout == "[]\n"
    assert yurt.execute(busybox_rootfs, ["sh", "-c", "echo [$MARKER]"], cleanenv=False).stdout == "[here]\n"


def test_check_raises_container_failed_with_the_result(busybox_rootfs: Path) -> None:
    with pytest.raises(api.ContainerFailed) as info:
        yurt.execute(busybox_rootfs, ["sh", "-c", "echo partial; exit 4"], check=True)
    e = info.value
    assert isinstance(e, subprocess.CalledProcessError) and isinstance(e, YurtError)
    assert (e.returncode, e.exit_code, e.stdout, e.result.returncode) == (4, 4, "partial\n", 4)
    assert "status 4" in str(e)
    # without check, a failing program is a result, not an error; so is its own "yurt: error:" line
    r = yurt.execute(busybox_rootfs, ["sh", "-c", 'echo "yurt: error: not yurt" >&2; exit 255'])
    assert r.returncode == 255 and r.stderr == "yurt: error: not yurt\n"
    assert yurt.execute(busybox_rootfs, ["sh", "-c", "exit 127"]).returncode == 127


@pytest.mark.parametrize("mistake, cls", [
    (["/no/such/image.sif", "true"], ImageError),
    (["--bogus-flag", "IMAGE", "true"], UsageError),
    (["IMAGE", "/no/such/program"], PayloadNotFound),
    (["IMAGE", "no-such-program"], PayloadNotFound),
])
def test_yurt_errors_raise_the_class_and_line_of_the_command(busybox_rootfs: Path, yurt_cmd, mistake, cls) -> None:
    words = [str(busybox_rootfs) if w == "IMAGE" else w for w in mistake]
    cli = yurt_cmd("exec", *words)
    options = [w for w in words if w.startswith("--")]
    image, *args = [w for w in words if not w.startswith("--")]
    with pytest.raises(cls) as info:
        yurt.execute(image, args, options=options)  # no check=True: yurt's own errors always raise
    e = info.value
    assert type(e) is cls
    assert e.exit_code == cli.returncode == e.result.returncode
    assert cli.stderr == f"yurt: error: {e}\n"  # the very line the command line prints, and one line
    assert e.result.stderr == cli.stderr


def test_timeout_stops_the_container(busybox_rootfs: Path) -> None:
    for extra in ({}, {"pid": True}):  # the payload as yurt itself, and under a supervisor and init
        marker = f"{time.time_ns() % 100000}"
        started = time.monotonic()
        with pytest.raises(api.ContainerTimeout) as info:
            yurt.execute(busybox_rootfs, ["sh", "-c", f"echo started; exec sleep 7{marker}"], timeout=2, **extra)
        assert time.monotonic() - started < 2 + api.KILL_GRACE
        e = info.value
        assert isinstance(e, subprocess.TimeoutExpired) and e.timeout == 2 and e.stdout == "started\n"
        assert _none_left(f"7{marker}"), extra


def _alive(pid: int | str) -> bool:
    """Running, not a zombie waiting for its new parent (init) to reap it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def _none_left(word: str, within: float = 5.0) -> bool:
    """No live process has ``word`` as an argument (waiting up to ``within`` s for them to finish dying)."""
    deadline = time.monotonic() + within
    while _processes_with(word):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _processes_with(word: str) -> list[str]:
    """Live processes with ``word`` as one of their arguments."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if word.encode() in args and _alive(pid):
            found.append(pid)
    return found


def test_stream_yields_lines_as_they_come(busybox_rootfs: Path, capfd: pytest.CaptureFixture[str]) -> None:
    gen = yurt.stream(busybox_rootfs, ["sh", "-c", "echo one; echo two >&2; echo three; exit 5"], check=False)
    lines = []
    while True:
        try:
            lines.append(next(gen))
        except StopIteration as stop:
            status = stop.value
            break
    assert lines == ["one\n", "three\n"] and status == 5
    assert "two" in capfd.readouterr().err
    with pytest.raises(api.ContainerFailed):
        list(yurt.stream(busybox_rootfs, ["sh", "-c", "exit 2"]))
    with pytest.raises(ImageError):
        list(yurt.stream("/no/such.sif", ["true"]))
    # leaving the loop early stops the container
    marker = f"{time.time_ns() % 100000}"
    gen = yurt.stream(busybox_rootfs, ["sh", "-c", f"echo first; exec sleep 8{marker}"])
    assert next(gen) == "first\n"
    gen.close()
    assert _none_left(f"8{marker}")


# --------------------------------------------------------------------------- instances


def test_instance_context_manager_leaves_nothing_running(busybox_rootfs: Path) -> None:
    with yurt.Instance(busybox_rootfs) as inst:
        (info,) = yurt.instances()
        assert info.name == inst.name and info.pid > 0 and info.image == str(busybox_rootfs)
        assert os.path.exists(info.stdout_log)
        r = inst.exec(["sh", "-c", "echo $YURT_INSTANCE $SVC; echo $$"], env={"SVC": "db"}, check=True)
        assert r.stdout.split()[:2] == [inst.name, "db"]
        assert yurt.execute(inst, ["true"]).returncode == 0  # an Instance is an image too
        with pytest.raises(UsageError, match="already exists"):
            yurt.Instance(busybox_rootfs, inst.name).start()
        pid = info.pid
    assert yurt.instances() == [] and not inst.running
    assert not _alive(pid)
    # stopped when the block raises, too
    with pytest.raises(RuntimeError), yurt.Instance(busybox_rootfs, "failing-block") as inst:
        assert [i.name for i in yurt.instances()] == ["failing-block"]
        raise RuntimeError("in the block")
    assert yurt.instances() == []
    with pytest.raises(UsageError, match="no instance named failing-block"):
        inst.stop()
    inst.stop(missing_ok=True)
    with pytest.raises(UsageError, match="bad instance name"):
        yurt.Instance(busybox_rootfs, "-bad").start()


def test_instance_start_and_stop_by_hand(busybox_sif: Path) -> None:
    inst = yurt.Instance(busybox_sif, "by-hand", args=["a1"]).start()
    try:
        (info,) = yurt.instances("by-hand")
        assert info.args == ("a1",) and info.image == str(busybox_sif)
        assert inst.run(["sh", "-c", "echo in the runscript"]).stdout.endswith("in the runscript\n")
    finally:
        inst.stop(force=True)
    assert yurt.instances() == [] and not _alive(info.pid)
    assert _none_left(str(busybox_sif))  # nor its squashfuse


# --------------------------------------------------------------------------- images


def _oci_layout(layout: Path, rootfs: Path, tag: str) -> None:
    """An OCI image layout with one image: ``rootfs`` as its single layer."""
    def blob(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (layout / "blobs" / "sha256" / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(os.listdir(rootfs)):
            tar.add(rootfs / entry, arcname=entry)
    tar_bytes = raw.getvalue()
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    config = json.dumps({"architecture": arch, "os": "linux",
                         "config": {"Env": ["PATH=/usr/bin:/bin", "FROM_OCI=yes"], "Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers",
                                    "diff_ids": [f"sha256:{hashlib.sha256(tar_bytes).hexdigest()}"]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    **blob(gzip.compress(tar_bytes, mtime=0))}],
    }).encode()
    index = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                                **blob(manifest),
                                                "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')


@pytest.mark.requires("mksquashfs")
def test_pull_an_oci_layout(busybox_rootfs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = tmp_path / "layout"
    _oci_layout(layout, busybox_rootfs, "v1")
    sif = yurt.pull(f"oci:{layout}:v1", tmp_path / "pulled.sif")
    assert sif == tmp_path / "pulled.sif" and sif.is_file()
    r = yurt.execute(sif, ["sh", "-c", "echo $FROM_OCI; busybox true && echo busybox"], check=True)
    assert r.stdout == "yes\nbusybox\n"
    # dest a directory: the default name in it; dest omitted: in the working directory, as `yurt pull REF`
    assert yurt.pull(f"oci:{layout}:v1", tmp_path) == tmp_path / "layout_v1.sif"
    (tmp_path / "wd").mkdir()
    monkeypatch.chdir(tmp_path / "wd")
    assert yurt.pull(f"oci:{layout}:v1") == tmp_path / "wd" / "layout_v1.sif"
    with pytest.raises(UsageError, match="already exists"):
        yurt.pull(f"oci:{layout}:v1", sif)
    before = sif.stat().st_ino
    assert yurt.pull(f"oci:{layout}:v1", sif, force=True) == sif and sif.stat().st_ino != before
    with pytest.raises(YurtError) as info:
        yurt.pull(f"oci:{layout}:no-such-tag", tmp_path / "x.sif")
    assert "no-such-tag" in str(info.value) and not (tmp_path / "x.sif").exists()
    with pytest.raises(UsageError, match="cannot pull"):
        yurt.pull("ftp://example.org/x", tmp_path / "y.sif")


@pytest.mark.requires("mksquashfs")
def test_build_a_definition_file_and_inspect_it(busybox_rootfs: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "app.def"
    recipe.write_text(f"Bootstrap: localimage\nFrom: {busybox_rootfs}\n\n"
                      "%post\n    echo '{{ GREETING }}' > /greeting\n\n"
                      "%environment\n    export APP_MODE=batch\n\n"
                      "%labels\n    Maintainer api-test\n\n"
                      '%runscript\n    echo "runscript: $(cat /greeting) $APP_MODE $*"\n')
    out = yurt.build(recipe, tmp_path / "app.sif", build_args={"GREETING": "hi there"})
    assert out == tmp_path / "app.sif" and out.is_file()
    assert yurt.run(out, ["x", "y"], check=True).stdout == "runscript: hi there batch x y\n"
    info = yurt.inspect(out)
    assert info["labels"]["Maintainer"] == "api-test"
    assert "echo 'hi there' > /greeting" in info["deffile"]  # as built: the arguments filled in
    assert "runscript:" in info["runscript"]
    assert any("APP_MODE=batch" in text for text in info["environment"].values())
    assert info["format"] == "sif" and info["digest"].startswith("sha256:")
    # a sandbox, relative to cwd
    box = yurt.build(recipe, "box", sandbox=True, build_args={"GREETING": "x"}, cwd=tmp_path)
    assert box == tmp_path / "box" and (box / "greeting").read_text() == "x\n"
    with pytest.raises(UsageError, match="already exists"):
        yurt.build(recipe, out, build_args={"GREETING": "x"})
    bad = tmp_path / "bad.def"
    bad.write_text(f"Bootstrap: localimage\nFrom: {busybox_rootfs}\n\n%post\n    echo step-output; exit 3\n")
    with pytest.raises(BuildError) as info_:
        yurt.build(bad, tmp_path / "bad.sif")
    assert "step-output" in info_.value.result.stdout + info_.value.result.stderr
    assert not (tmp_path / "bad.sif").exists()


def test_inspect_errors_are_the_commands(tmp_path: Path, yurt_cmd) -> None:
    with pytest.raises(ImageError) as info:
        yurt.inspect(tmp_path / "missing.sif")
    assert yurt_cmd("inspect", tmp_path / "missing.sif").stderr == f"yurt: error: {info.value}\n"
    with pytest.raises(UsageError, match="pull it first"):
        yurt.inspect("docker://busybox")
