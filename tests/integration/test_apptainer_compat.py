"""yurt as Apptainer: its names, versions, exit statuses, output formats, options and variables.

Run as the unprivileged user, through a symbolic link named ``apptainer`` (or ``singularity``) to the
installed ``yurt`` script, as a site makes one, and through the installed ``yurt-apptainer`` and
``yurt-singularity`` scripts.  Every check runs a real container (README, "Using yurt as Apptainer").
The options that need a registry are in tests/e2e/test_apptainer_registry.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
from installed_yurt import make_run_yurt, yurt_argv, yurt_link

pytestmark = [pytest.mark.userns]

if os.geteuid() == 0:
    pytest.skip("rootless tests run as the unprivileged test user", allow_module_level=True)

SCRIPTS = Path(sysconfig.get_path("scripts"))
CLAIMED = "1.3.6"


def _installed_script() -> Path:
    argv = yurt_argv()
    if len(argv) != 1:
        pytest.skip("yurt is not installed as a script (python -m yurt): no name to link to")
    return Path(argv[0])


class Named:
    """yurt started under another name: ``run(*args, env=..., cwd=...)``, with ``bin`` first on PATH."""

    def __init__(self, bin_dir: Path, name: str, cwd: Path) -> None:
        self.bin, self.name, self.cwd = bin_dir, name, cwd

    def __call__(self, *args, env: dict | None = None, cwd: Path | None = None, timeout: float = 120,
                 input: str | None = None) -> subprocess.CompletedProcess:
        full = {**os.environ, "PATH": f"{self.bin}:{SCRIPTS}:/usr/sbin:/usr/bin:/sbin:/bin", **(env or {})}
        for k in [k for k, v in full.items() if v is None]:
            del full[k]
        return subprocess.run([str(self.bin / self.name), *map(str, args)], env=full, cwd=cwd or self.cwd,
                              capture_output=True, text=True, timeout=timeout, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL, check=False)


@pytest.fixture
def names(tmp_path: Path) -> Path:
    """A directory with ``apptainer`` and ``singularity`` links to the installed yurt."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("apptainer", "singularity"):
        yurt_link(bin_dir, name)
    return bin_dir


@pytest.fixture
def apptainer(names: Path, tmp_path: Path) -> Named:
    return Named(names, "apptainer", tmp_path)


def ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, f"rc={r.returncode}\nstdout={r.stdout}\nstderr={r.stderr}"
    return r.stdout


def refused(r: subprocess.CompletedProcess, option: str) -> None:
    """Refused as yurt refuses: status 255, one ``yurt: error:`` line that names the option."""
    assert r.returncode == 255, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("yurt: error: ") and option in lines[0], r.stderr
    assert "unknown option" not in r.stderr


# --- names and versions ----------------------------------------------------------------------------


def test_installed_scripts_answer_as_apptainer(tmp_path):
    _installed_script()
    for name in ("yurt-apptainer", "yurt-singularity", "run-singularity"):
        assert os.access(SCRIPTS / name, os.X_OK), f"{name} is not installed next to yurt"
    for name in ("yurt-apptainer", "yurt-singularity"):
        assert ok(Named(SCRIPTS, name, tmp_path)("--version")) == f"apptainer version {CLAIMED}\n"
        assert ok(Named(SCRIPTS, name, tmp_path)("version")) == f"{CLAIMED}\n"
    assert re.fullmatch(r"yurt version \S+\n", ok(make_run_yurt(tmp_path)("--version")))
    assert re.fullmatch(r"yurt version \S+\n", ok(make_run_yurt(tmp_path)("version")))


def test_links_named_apptainer_and_singularity(names, tmp_path):
    for name in ("apptainer", "singularity"):
        out = ok(Named(names, name, tmp_path)("--version")).strip()
        # cwltool's parse (cwltool/singularity_utils.py); Snakemake's takes the last word after "apptainer"
        flavor, version = re.match(r"(.+) version ([0-9\.]+)", out).groups()
        assert flavor == "apptainer" and [int(p) for p in version.split(".")] >= [1, 1, 0]
        assert ok(Named(names, name, tmp_path)("version")).strip() == CLAIMED
    # Apptainer's commands yurt lacks are named as such, not "unknown command"
    r = Named(names, "apptainer", tmp_path)("sign", "x.sif")
    assert r.returncode == 255 and "'apptainer sign' is not supported" in r.stderr


def test_global_options(apptainer, busybox_sif):
    assert ok(apptainer("-v", "--nocolor", "exec", busybox_sif, "echo", "x")) == "x\n"
    assert ok(apptainer("--verbose", "-s", "exec", busybox_sif, "echo", "x")) == "x\n"
    refused(apptainer("--config", "/etc/apptainer/apptainer.conf", "exec", busybox_sif, "true"), "--config")
    refused(apptainer("-c", "/x.conf", "version"), "-c")


# --- exit statuses -----------------------------------------------------------------------------------


def test_exit_statuses_are_apptainers(apptainer, busybox_sif, tmp_path):
    r = apptainer("exec", busybox_sif, "no-such-command")
    assert r.returncode == 255, r.stderr  # Apptainer: FATAL (status 255), in these words
    assert r.stderr == 'yurt: error: "no-such-command": executable file not found in $PATH\n'
    r = apptainer("exec", busybox_sif, "/no/such")
    assert r.returncode == 255 and '"/no/such": no such file or directory' in r.stderr
    assert apptainer("exec", busybox_sif, "sh", "-c", "exit 3").returncode == 3
    # killed by a signal: the payload is the process (a shell shows 137)
    assert apptainer("exec", busybox_sif, "sh", "-c", "kill -9 $$").returncode == -9
    # under yurt's own name a shell's statuses (README, "Exit status")
    r = make_run_yurt(tmp_path)("exec", busybox_sif, "no-such-command")
    assert r.returncode == 127 and "command not found in the container" in r.stderr


def test_image_runs_as_a_program_without_apptainer(busybox_sif, tmp_path):
    """``./img.sif ARGS``: the launch line's ``run-singularity`` is yurt's (installed next to it)."""
    _installed_script()
    sif = tmp_path / "prog.sif"
    shutil.copyfile(busybox_sif, sif)
    sif.chmod(0o755)
    assert sif.read_bytes()[:31] == b"#!/usr/bin/env run-singularity\n"
    env = {**os.environ, "PATH": f"{SCRIPTS}:/usr/bin:/bin"}
    assert shutil.which("run-singularity", path=env["PATH"]) == str(SCRIPTS / "run-singularity")
    r = subprocess.run([str(sif), "echo", "as a program"], env=env, capture_output=True, text=True,
                       cwd=tmp_path, timeout=120, check=False)
    assert r.returncode == 0 and r.stdout.endswith("as a program\n"), r.stderr
    assert "Hello from a yurt container" in r.stdout  # the runscript ran, not the command alone
    r = subprocess.run([str(sif), "sh", "-c", "exit 4"], env=env, capture_output=True, text=True,
                       cwd=tmp_path, timeout=120, check=False)
    assert r.returncode == 4


# --- action options ----------------------------------------------------------------------------------


def test_mount_option(apptainer, busybox_sif, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("mounted\n")
    spec = f"type=bind,source={data},target=/in,readonly"
    r = apptainer("exec", "--mount", spec, busybox_sif, "sh", "-c", "cat /in/f; touch /in/g")
    assert r.stdout == "mounted\n" and "Read-only file system" in r.stderr and not (data / "g").exists()
    # CSV quoting (cwltool quotes fields), src/dst spellings, rslave propagation, rw by default
    spec = f'"type=bind","src={data}","dst=/rw",bind-propagation=rslave'
    ok(apptainer("exec", "--mount", spec, busybox_sif, "touch", "/rw/g"))
    assert (data / "g").exists()
    refused(apptainer("exec", "--mount", f"type=bind,source={data},target=/x,bind-propagation=shared",
                      busybox_sif, "true"), "bind-propagation=shared")
    refused(apptainer("exec", "--mount", "type=volume,source=v,target=/x", busybox_sif, "true"), "--mount")


def test_mount_paths_with_colon_and_comma(apptainer, busybox_sif, tmp_path):
    # -B cannot say these names (':' and ',' separate its fields); --mount's CSV can, as in Apptainer
    # (cwltool stages inputs such as "A:Gln2Cys" this way).
    data = tmp_path / "A:Gln,2Cys"
    data.mkdir()
    (data / "f").write_text("odd name\n")
    spec = f'type=bind,"source={data}","target=/in/B:x,y",readonly'
    assert ok(apptainer("exec", "--mount", spec, busybox_sif, "cat", "/in/B:x,y/f")) == "odd name\n"
    r = apptainer("exec", "--mount", spec, busybox_sif, "touch", "/in/B:x,y/g")
    assert r.returncode != 0 and "Read-only file system" in r.stderr
    refused(apptainer("exec", "--mount", f'type=bind,"source={data}",target=relative', busybox_sif, "true"),
            "must be an absolute path")


def test_network_none_and_no_eval_and_userns(apptainer, busybox_sif):
    out = ok(apptainer("exec", "--net", "--network", "none", busybox_sif, "ls", "/sys/class/net"))
    assert out.split() == ["lo"]
    out = ok(apptainer("exec", "--network=none", busybox_sif, "ls", "/sys/class/net"))
    assert out.split() == ["lo"]
    refused(apptainer("exec", "--net", "--network", "bridge", busybox_sif, "true"), "--network bridge")
    # --no-eval: arguments reach the command as they are (yurt never evaluates them)
    assert ok(apptainer("exec", "--no-eval", "-u", busybox_sif, "echo", "$HOME", "`id`")) == "$HOME `id`\n"
    assert ok(apptainer("exec", "--userns", busybox_sif, "id", "-u")).strip() == str(os.getuid())


def test_no_mount(apptainer, busybox_sif, tmp_path):
    home = os.environ["HOME"]
    r = apptainer("exec", "--no-mount", "home", busybox_sif, "ls", home)
    assert r.returncode != 0 and "No such file" in r.stderr
    ok(apptainer("exec", busybox_sif, "ls", "-d", home))
    work = tmp_path / "work"
    work.mkdir()
    (work / "mark").write_text("")
    assert "mark" in ok(apptainer("exec", busybox_sif, "ls", work, cwd=work))
    r = apptainer("exec", "--no-mount", "cwd,tmp", busybox_sif, "ls", "/tmp", cwd=work)
    assert r.returncode == 0 and r.stdout == "", r  # neither the host's /tmp nor the working directory
    assert ok(apptainer("exec", "-c", "--no-mount", "devpts", busybox_sif, "ls", "/dev/pts")) == ""
    assert ok(apptainer("exec", "-c", busybox_sif, "ls", "/dev/pts")).split() == ["ptmx"]
    refused(apptainer("exec", "--no-mount", "bogus", busybox_sif, "true"), "--no-mount 'bogus'")


def test_compat_umask_scratch(apptainer, busybox_sif, tmp_path):
    script = "umask; touch /new && echo writable; echo pid=$$ foo=$FOO; ls /tmp | wc -l"
    out = ok(apptainer("exec", "--compat", busybox_sif, "sh", "-c", script, env={"FOO": "host"}))
    assert out.split("\n")[:3] == ["0022", "writable", "pid=1 foo="], out  # no init (--no-init): sh is PID 1
    mask = "umask 077; exec \"$@\""
    assert subprocess.run(["sh", "-c", mask, "sh", str(apptainer.bin / "apptainer"), "exec", str(busybox_sif), "sh",
                           "-c", "umask"], capture_output=True, text=True, check=True).stdout == "0077\n"
    assert subprocess.run(["sh", "-c", mask, "sh", str(apptainer.bin / "apptainer"), "exec", "--no-umask",
                           str(busybox_sif), "sh", "-c", "umask"], capture_output=True, text=True,
                          check=True).stdout == "0022\n"
    out = ok(apptainer("exec", "-S", "/scr", "--scratch", "/a,/b", busybox_sif, "sh", "-c",
                       "touch /scr/x /a/y /b/z && ls -A /scr /a /b | wc -w"))
    assert out.strip() == "6"  # three empty directories (and a header line each) plus the files
    work = tmp_path / "w"
    work.mkdir()
    ok(apptainer("exec", "-W", work, "-S", "/scr", busybox_sif, "touch", "/scr/kept"))
    assert [p.name for p in (work / "scratch").iterdir()] == ["scr"] and (work / "scratch/scr/kept").exists()


def test_capabilities(apptainer, busybox_sif):
    def bounding(*opts: str) -> int:
        out = ok(apptainer("exec", *opts, busybox_sif, "grep", "CapBnd", "/proc/self/status"))
        return int(out.split()[1], 16)

    full = bounding()
    assert full & (1 << 13)  # CAP_NET_RAW
    assert bounding("--drop-caps", "CAP_NET_RAW,sys_admin") == full & ~(1 << 13) & ~(1 << 21)
    assert bounding("--fakeroot", "--no-privs") == 0
    out = ok(apptainer("exec", "--fakeroot", "--no-privs", busybox_sif, "grep", "CapEff", "/proc/self/status"))
    assert int(out.split()[1], 16) == 0
    refused(apptainer("exec", "--add-caps", "CAP_NET_RAW", busybox_sif, "true"), "--add-caps")
    refused(apptainer("exec", "--security", "seccomp:/x.json", busybox_sif, "true"), "--security")
    refused(apptainer("exec", "--drop-caps", "CAP_NOPE", busybox_sif, "true"), "CAP_NOPE")


# --- variables ---------------------------------------------------------------------------------------


def test_apptainer_variables(apptainer, busybox_sif, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "which").write_text(d.name)
    r = apptainer("exec", busybox_sif, "cat", "/in/which", env={"APPTAINER_BIND": f"{a}:/in"})
    assert r.stdout == "a" and r.stderr == ""
    assert ok(apptainer("exec", busybox_sif, "cat", "/in/which", env={"SINGULARITY_BINDPATH": f"{b}:/in"})) == "b"
    # YURT_ wins; one warning says so
    r = apptainer("exec", busybox_sif, "cat", "/in/which", env={"YURT_BIND": f"{a}:/in", "APPTAINER_BIND": f"{b}:/in"})
    assert r.stdout == "a" and r.returncode == 0
    assert r.stderr == ("yurt: warning: YURT_BIND and APPTAINER_BIND differ; using YURT_BIND "
                        "(YURT_ wins, then APPTAINER_, then SINGULARITY_)\n")
    r = apptainer("exec", busybox_sif, "cat", "/in/which", env={"APPTAINER_BIND": f"{a}:/in",
                                                                 "SINGULARITY_BIND": f"{a}:/in"})
    assert r.stdout == "a" and r.stderr == ""  # the same value: nothing to say
    # ...also for yes/no values written differently
    env = {"FOO": "host", "APPTAINER_CLEANENV": "1", "SINGULARITY_CLEANENV": "true"}
    r = apptainer("exec", busybox_sif, "sh", "-c", "echo foo=$FOO", env=env)
    assert r.stdout == "foo=\n" and r.stderr == ""
    out = ok(apptainer("exec", busybox_sif, "sh", "-c", "echo $$", env={"SINGULARITY_CONTAINALL": "1"}))
    assert int(out) <= 2  # its own PID namespace
    # under yurt's own name too
    assert ok(make_run_yurt(tmp_path)("exec", busybox_sif, "cat", "/in/which",
                                      env={"APPTAINER_BIND": f"{b}:/in"})) == "b"


def test_apptainer_cachedir_and_tmpdir(apptainer, tmp_path, busybox_rootfs):
    """``APPTAINER_CACHEDIR`` is where yurt caches; ``APPTAINER_TMPDIR`` where builds work."""
    cache = tmp_path / "acache"
    recipe = tmp_path / "r.def"
    recipe.write_text(f"Bootstrap: localimage\nFrom: {busybox_rootfs}\n%post\n  echo hi > /hi\n")
    env = {"YURT_CACHEDIR": None, "APPTAINER_CACHEDIR": str(cache), "APPTAINER_TMPDIR": str(tmp_path / "nope")}
    r = apptainer("build", tmp_path / "o.sif", recipe, env=env, timeout=300)
    assert r.returncode == 255 and "nope does not exist" in r.stderr
    (tmp_path / "tmpd").mkdir()
    env["APPTAINER_TMPDIR"] = str(tmp_path / "tmpd")
    ok(apptainer("build", tmp_path / "o.sif", recipe, env=env, timeout=300))
    assert any(cache.iterdir()), "the build cache is under APPTAINER_CACHEDIR"
    assert ok(make_run_yurt(tmp_path)("config", "show", env=env)).count(str(cache)) >= 1


# --- inspect, instances, build -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def rich_sandbox(busybox_rootfs, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rich") / "sbx"
    shutil.copytree(busybox_rootfs, root, symlinks=True)
    meta = root / ".singularity.d"
    (meta / "test").write_text("#!/bin/sh\necho testing\n")
    (meta / "startscript").write_text("#!/bin/sh\nexec sleep 1000\n")
    (meta / "Singularity").write_text("Bootstrap: scratch\n")
    app = root / "scif/apps/hello/scif"
    app.mkdir(parents=True)
    (app / "runscript").write_text("#!/bin/sh\necho hello app\n")
    (app / "labels.json").write_text('{"APP": "hello"}')
    return root


def test_inspect_json_layout(apptainer, busybox_sif, rich_sandbox):
    doc = json.loads(ok(apptainer("inspect", "--json", busybox_sif)))
    assert set(doc) == {"data", "type"} and doc["type"] == "container"
    assert list(doc["data"]["attributes"]) == ["labels"]  # Apptainer's default section
    assert doc["data"]["attributes"]["labels"]["org.label-schema.name"] == "yurt-busybox"
    doc = json.loads(ok(apptainer("inspect", "-j", "-t", "-s", "-d", "-r", rich_sandbox)))
    attrs = doc["data"]["attributes"]
    assert attrs["test"] == "#!/bin/sh\necho testing" and attrs["startscript"].endswith("sleep 1000")
    assert attrs["deffile"] == "Bootstrap: scratch" and attrs["runscript"].startswith("#!/bin/sh")
    assert ok(apptainer("inspect", "--test", rich_sandbox)) == "#!/bin/sh\necho testing\n"
    assert ok(apptainer("inspect", "--list-apps", rich_sandbox)) == "hello\n"
    doc = json.loads(ok(apptainer("inspect", "--app", "hello", "--json", "-r", "-l", rich_sandbox)))
    assert doc["data"]["attributes"]["apps"]["hello"] == {"labels": {"APP": "hello"},
                                                          "runscript": "#!/bin/sh\necho hello app"}
    doc = json.loads(ok(apptainer("inspect", "--all", rich_sandbox)))
    assert {"apps", "labels", "test", "startscript", "runscript"} <= set(doc["data"]["attributes"])
    assert ok(apptainer("inspect", "-l", busybox_sif)).startswith("BusyBox.Version: ")
    # cwltool tells a sandbox from a stray directory by non-empty attributes (_inspect_singularity_sandbox)
    empty = rich_sandbox.parent / "empty"
    empty.mkdir(exist_ok=True)
    r = apptainer("inspect", "--json", empty)
    assert r.returncode != 0 or not json.loads(r.stdout)["data"]["attributes"]


def test_instance_list_json_and_start_options(apptainer, busybox_sif, tmp_path):
    env = {"YURT_RUNTIMEDIR": str(tmp_path / "run")}
    pidfile = tmp_path / "i.pid"
    try:
        ok(apptainer("instance", "start", "--pid-file", pidfile, busybox_sif, "web", env=env))
        doc = json.loads(ok(apptainer("instance", "list", "--json", env=env)))
        (row,) = doc["instances"]
        assert set(row) == {"instance", "pid", "img", "ip", "logErrPath", "logOutPath"}
        assert row["instance"] == "web" and row["img"] == str(busybox_sif) and row["ip"] == ""
        assert int(pidfile.read_text()) == row["pid"] and os.path.exists(row["logErrPath"])
        text = ok(apptainer("instance", "list", env=env)).splitlines()
        assert text[0].split() == ["INSTANCE", "NAME", "PID", "IP", "IMAGE"] and text[1].split()[0] == "web"
        assert "web" in ok(apptainer("instance.list", env=env))  # Singularity 2's spelling (spython's)
    finally:
        ok(apptainer("instance", "stop", "--all", env=env))
    assert json.loads(ok(apptainer("instance", "list", "--json", env=env))) == {"instances": []}


def test_build_sources(apptainer, busybox_sif, busybox_rootfs, tmp_path):
    # a recipe is told by its Bootstrap: header before its name (cwltool writes Dockerfile.def)
    recipe = tmp_path / "Dockerfile.def"
    recipe.write_text(f"Bootstrap: localimage\nFrom: {busybox_sif}\n\n%post\n    echo built > /built\n")
    ok(apptainer("build", tmp_path / "d.sif", recipe, timeout=300))
    assert ok(apptainer("exec", tmp_path / "d.sif", "cat", "/built")) == "built\n"
    # a SIF to a sandbox, and to a SIF again
    work = tmp_path / "own"
    work.mkdir()
    ok(apptainer("build", "--sandbox", work / "sbx", busybox_sif, timeout=300))
    assert (work / "sbx/bin/busybox").is_file() and (work / "sbx/.singularity.d/runscript").is_file()
    assert ok(apptainer("exec", work / "sbx", "echo", "from the sandbox")) == "from the sandbox\n"
    ok(apptainer("build", "-F", work / "copy.sif", busybox_sif))
    assert ok(apptainer("exec", work / "copy.sif", "echo", "y")) == "y\n"
    refused(apptainer("build", work / "x.sif", "docker-daemon:busybox:latest"), "docker-daemon:")
    refused(apptainer("build", "--section", "post", work / "x.sif", recipe), "--section")
    refused(apptainer("build", "--encrypt", work / "x.sif", recipe), "--encrypt")
