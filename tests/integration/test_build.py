"""``yurt build OUT RECIPE.def`` for real, as an unprivileged user.

Every build bootstraps from the host's busybox (``Bootstrap: busybox``, or ``localimage``
from the busybox rootfs fixture), runs ``%post`` and ``%test`` in real containers through
the launcher, and packs a real SIF or sandbox, which is then run with ``yurt run/exec``.
Both kinds of rootless fakeroot are covered: with the user's ``/etc/subuid`` range
(``newuidmap``) when there is one, and single-id (``YURT_BUILD_IGNORE_SUBUID=1``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from installed_yurt import yurt_argv

pytestmark = [pytest.mark.userns, pytest.mark.requires("mksquashfs", "unsquashfs")]

if os.geteuid() == 0:
    pytest.skip("rootless tests run as the unprivileged test user", allow_module_level=True)

SUBUID_MSG = "fakeroot with a subuid range (newuidmap)"
SINGLE_MSG = "single-id fakeroot; chown/mknod are faked (seccomp)"


def has_subuid() -> bool:
    import pwd

    from yurt.runtime.idmap import subid_range

    name = pwd.getpwuid(os.getuid()).pw_name
    return bool(subid_range("/etc/subuid", name, os.getuid()) and subid_range("/etc/subgid", name, os.getuid())
                and shutil.which("newuidmap") and shutil.which("newgidmap"))


MODES = {
    "single": {"YURT_BUILD_IGNORE_SUBUID": "1"},
    "subuid": {"YURT_BUILD_IGNORE_SUBUID": None},
}


@pytest.fixture(params=sorted(MODES))
def mode(request) -> str:
    if request.param == "subuid" and not has_subuid():
        pytest.skip("no /etc/subuid and /etc/subgid range (or newuidmap) for this user")
    return request.param


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"rc={result.returncode}\nstdout={result.stdout}\nstderr={result.stderr}"
    return result.stdout


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(".yurt-build-") or ".tmp-" in p.name]


def sif_listing(sif: Path) -> str:
    """``unsquashfs -lln`` of the SIF's partition: owners as numbers."""
    from yurt.image.sif import SifFile

    with SifFile.open(sif) as f:
        offset = f.primary_partition().offset
    return subprocess.run(["unsquashfs", "-o", str(offset), "-lln", "-d", "", str(sif)], capture_output=True,
                          text=True, check=True).stdout


def owner_of(listing: str, path: str) -> str:
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[-1] == path or (len(parts) >= 8 and parts[-3] == path and parts[-2] == "->"):
            return parts[1]
    raise AssertionError(f"{path} not in the image:\n{listing[:2000]}")


FULL_RECIPE = """\
Bootstrap: localimage
From: {base}

%files
    data/hello.txt /opt/hello.txt
    data/*.cfg /opt/configs/

%post
    echo "post uid: $(id -u)"
    mkdir -p /opt/made
    echo made-in-post > /opt/made/file
    chown 1:1 /opt/made/file
    echo 'export LATE_VAR=from-post' >> "$APPTAINER_ENVIRONMENT"
    echo 'post.label yes' >> "$APPTAINER_LABELS"
    test ! -e /.singularity.d/env/90-environment.sh || ! grep -q MY_VAR /.singularity.d/env/90-environment.sh

%environment
    export MY_VAR="from environment"

%runscript
    echo "runscript: $MY_VAR $LATE_VAR args: $*"

%labels
    Maintainer yurt-tests
    Version 1.2

%help
    This image says hello.

%test
    echo "test uid: $(id -u)"
    test "$MY_VAR" = "from environment"
    grep -q made-in-post /opt/made/file
"""


def test_build_sif_from_localimage(yurt_cmd, busybox_rootfs, tmp_path, mode):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "hello.txt").write_text("hello file\n")
    (tmp_path / "data" / "a.cfg").write_text("a\n")
    (tmp_path / "data" / "b.cfg").write_text("b\n")
    recipe = write(tmp_path / "img.def", FULL_RECIPE.format(base=busybox_rootfs))
    out = tmp_path / "out" / "img.sif"
    out.parent.mkdir()
    r = yurt_cmd("build", out, recipe, env=MODES[mode], cwd="/", timeout=300)
    ok(r)
    assert "post uid: 0" in r.stdout  # fakeroot
    assert f"test uid: {os.getuid()}" in r.stdout  # %test runs as the user
    assert (SUBUID_MSG if mode == "subuid" else SINGLE_MSG) in r.stderr
    assert out.is_file() and leftovers(out.parent) == []

    assert ok(yurt_cmd("run", out, "a", "b")).strip() == "runscript: from environment from-post args: a b"
    assert ok(yurt_cmd("exec", out, "sh", "-c", "echo $MY_VAR")).strip() == "from environment"
    assert ok(yurt_cmd("exec", out, "cat", "/opt/hello.txt", "/opt/configs/a.cfg", "/opt/configs/b.cfg")) == \
        "hello file\na\nb\n"
    labels = json.loads(ok(yurt_cmd("inspect", "--labels", "--json", out)))["data"]["attributes"]["labels"]
    assert labels["Maintainer"] == "yurt-tests" and labels["Version"] == "1.2"
    assert labels["post.label"] == "yes"
    assert labels["org.label-schema.usage.singularity.deffile.bootstrap"] == "localimage"
    assert labels["org.label-schema.schema-version"] == "1.0"
    assert "This image says hello." in ok(yurt_cmd("run-help", out))
    assert "%runscript" in ok(yurt_cmd("inspect", "--deffile", out))

    listing = sif_listing(out)
    # subuid: chown really happened; single id: faked, and the image is packed all-root
    assert owner_of(listing, "/opt/made/file") == ("1/1" if mode == "subuid" else "0/0")
    assert owner_of(listing, "/opt/hello.txt") == "0/0"
    for placeholder in ("/.post.script", "/.yurt-apt.conf", "/.build.labels", "/etc/localtime"):
        assert f" {placeholder}\n" not in listing + "\n", placeholder
    assert " /singularity -> .singularity.d/runscript" in listing
    assert " /.singularity.d/env/01-base.sh" in listing


def test_build_sandbox_with_busybox_agent(yurt_cmd, tmp_path, mode):
    recipe = write(tmp_path / "bb.def", """\
Bootstrap: busybox
MirrorURL: https://www.busybox.net/downloads/binaries/1.35.0-x86_64-linux-musl/busybox

%post
    echo "post uid: $(id -u)" > /post-uid

%runscript
    #!/bin/sh
    cat /post-uid
    echo "busybox says $1"
""")
    out = tmp_path / "sandbox"
    r = yurt_cmd("build", "--sandbox", out, recipe, env=MODES[mode])
    ok(r)
    assert "MirrorURL" in r.stderr and "host's" in r.stderr  # no download: a warning
    assert (out / "bin" / "busybox").is_file() and (out / ".singularity.d" / "runscript").is_file()
    assert (out / ".singularity.d" / "runscript").read_text().startswith("#!/bin/sh\n")
    assert ok(yurt_cmd("run", out, "hi")).split("\n")[:2] == ["post uid: 0", "busybox says hi"]
    for d in ("dev", "proc", "sys", "tmp", "var/tmp", "home", "root", "etc"):
        assert (out / d).is_dir(), d
    assert (out / "etc" / "hosts").read_text() == "" and (out / "etc" / "resolv.conf").exists()
    assert not (out / ".post.script").exists() and leftovers(tmp_path) == []


def test_failing_test_fails_the_build(yurt_cmd, tmp_path):
    recipe = write(tmp_path / "t.def", """\
Bootstrap: busybox

%test
    echo "the test says: something is wrong"
    exit 3
""")
    out = tmp_path / "t.sif"
    r = yurt_cmd("build", out, recipe)
    assert r.returncode == 255
    assert "the test says: something is wrong" in r.stdout
    assert "%test failed with exit status 3" in r.stderr
    assert not out.exists() and leftovers(tmp_path) == []
    # --notest skips it
    ok(yurt_cmd("build", "--notest", out, recipe))
    assert out.is_file()


def test_failing_post_fails_the_build(yurt_cmd, tmp_path):
    recipe = write(tmp_path / "p.def", """\
Bootstrap: busybox

%post
    echo before the failure
    false
    echo never printed
""")
    for args in ([], ["--sandbox"]):
        out = tmp_path / ("p" if args else "p.sif")
        r = yurt_cmd("build", *args, out, recipe)
        assert r.returncode == 255
        assert "before the failure" in r.stdout and "never printed" not in r.stdout
        assert "%post failed with exit status 1" in r.stderr
        assert not out.exists() and leftovers(tmp_path) == []


def test_post_interpreter_and_setup(yurt_cmd, tmp_path):
    recipe = write(tmp_path / "s.def", """\
Bootstrap: busybox

%setup
    echo "from setup" > "$APPTAINER_ROOTFS/setup-file"
    test "$SINGULARITY_ROOTFS" = "$YURT_ROOTFS"

%post -c /bin/ash
    echo "interp: $0 $1"
    cat /setup-file
""")
    r = yurt_cmd("build", "--sandbox", tmp_path / "s", recipe)
    ok(r)
    assert "from setup" in r.stdout


def test_templating_with_build_args(yurt_cmd, tmp_path):
    recipe = write(tmp_path / "a.def", """\
Bootstrap: busybox

%arguments
    GREETING=hello
    WHO=world

%runscript
    echo "{{ GREETING }} {{WHO}}"
""")
    out = tmp_path / "a.sif"
    ok(yurt_cmd("build", "--build-arg", "WHO=yurt", out, recipe))
    assert ok(yurt_cmd("run", out)).strip() == "hello yurt"
    argfile = write(tmp_path / "args", "GREETING=salut\n")
    ok(yurt_cmd("build", "--force", "--build-arg-file", argfile, out, recipe))
    assert ok(yurt_cmd("run", out)).strip() == "salut world"
    r = yurt_cmd("build", "--force", "--build-arg", "NOPE=1", out, recipe)
    assert r.returncode == 255 and "unused build argument(s): NOPE" in r.stderr
    r = yurt_cmd("build", "--force", "--warn-unused-build-args", "--build-arg", "NOPE=1", out, recipe)
    ok(r)
    assert "unused build argument NOPE" in r.stderr
    r = yurt_cmd("build", tmp_path / "b.sif", write(tmp_path / "b.def", "Bootstrap: busybox\n%post\n  echo {{ X }}\n"))
    assert r.returncode == 255 and "{{ X }}" in r.stderr and not (tmp_path / "b.sif").exists()


def test_multistage_files_from(yurt_cmd, busybox_rootfs, tmp_path, mode):
    recipe = write(tmp_path / "m.def", f"""\
Bootstrap: localimage
From: {busybox_rootfs}
Stage: builder

%post
    mkdir -p /build/out
    echo artifact > /build/out/tool
    chmod 755 /build/out/tool
    echo one > /build/out/x.txt
    echo two > /build/out/y.txt
    # a symlink pointing out of the stage's root: followed inside it, never on the host
    ln -s / /build/escape
    ln -s /etc/hostname /build/host-link

Bootstrap: busybox
Stage: final

%files from builder
    /build/out/tool /usr/local/bin/tool
    /build/out/*.txt /texts/
    /build/escape/etc/hostname /from-escape
    /build/host-link

%runscript
    cat /usr/local/bin/tool /texts/x.txt /texts/y.txt /from-escape /build/host-link
""")
    out = tmp_path / "m.sif"
    ok(yurt_cmd("build", out, recipe, env=MODES[mode]))
    # the builder stage's /etc/hostname (yurt-busybox), not the host's
    assert ok(yurt_cmd("run", out)).split() == ["artifact", "one", "two", "yurt-busybox", "yurt-busybox"]
    assert leftovers(tmp_path) == []


def test_scif_app_install_and_layout(yurt_cmd, tmp_path):
    (tmp_path / "foo.txt").write_text("foo data\n")
    recipe = write(tmp_path / "scif.def", """\
Bootstrap: busybox

%appinstall foo
    pwd > installed-in
    echo "$SCIF_APPNAME" > name

%apprun foo
    echo "RUNNING FOO"

%appenv foo
    SOFTWARE=foo
    export SOFTWARE

%applabels foo
    BESTAPP FOO

%apphelp foo
    Help for foo.

%appfiles foo
    foo.txt
""")
    out = tmp_path / "scif"
    ok(yurt_cmd("build", "--sandbox", out, recipe))
    app = out / "scif" / "apps" / "foo"
    assert (app / "installed-in").read_text() == "/scif/apps/foo\n"
    assert (app / "name").read_text() == "foo\n"
    assert (app / "foo.txt").read_text() == "foo data\n"
    assert (app / "scif" / "runscript").read_text().startswith("#!/bin/sh")
    assert "SOFTWARE=foo" in (app / "scif" / "env" / "90-environment.sh").read_text()
    assert json.loads((app / "scif" / "labels.json").read_text())["BESTAPP"] == "FOO"
    assert (app / "scif" / "runscript.help").read_text().strip() == "Help for foo."
    assert ok(yurt_cmd("exec", out, "/scif/apps/foo/scif/runscript")).strip() == "RUNNING FOO"
    # yurt run --app: the app's runscript, with its environment and the SCIF variables
    assert ok(yurt_cmd("run", "--app", "foo", out)).strip() == "RUNNING FOO"
    assert ok(yurt_cmd("exec", "--app", "foo", out, "sh", "-c", 'echo "$SOFTWARE $SCIF_APPNAME $SCIF_APPROOT"')
              ).split() == ["foo", "foo", "/scif/apps/foo"]
    r = yurt_cmd("run", "--app", "nope", out)
    assert r.returncode == 255 and "no SCIF app 'nope'" in r.stderr
    r = yurt_cmd("run", "--app", "../etc", out)
    assert r.returncode == 255 and "bad app name" in r.stderr


def test_yurt_test_runs_the_image_test(yurt_cmd, tmp_path):
    recipe = write(tmp_path / "t.def", "Bootstrap: busybox\n\n%test\n    echo testing \"$@\"\n    exit 3\n")
    out = tmp_path / "t"
    ok(yurt_cmd("build", "--notest", "--sandbox", out, recipe))
    r = yurt_cmd("test", out, "x")
    assert r.returncode == 3 and r.stdout == "testing x\n"
    bare = tmp_path / "bare"
    ok(yurt_cmd("build", "--sandbox", bare, write(tmp_path / "b.def", "Bootstrap: busybox\n")))
    r = yurt_cmd("test", bare)
    assert r.returncode == 255 and "no test" in r.stderr


def test_build_from_sif_and_directory_source_still_works(yurt_cmd, busybox_rootfs, tmp_path):
    base = tmp_path / "base.sif"
    ok(yurt_cmd("build", base, busybox_rootfs))  # a directory source is packed as before
    recipe = write(tmp_path / "s.def", f"Bootstrap: localimage\nFrom: {base}\n\n%post\n    touch /extended\n")
    out = tmp_path / "ext.sif"
    ok(yurt_cmd("build", out, recipe))
    # the base image's runscript is kept (no %runscript), the new file is there
    assert "Hello from a yurt container" in ok(yurt_cmd("run", out))
    ok(yurt_cmd("exec", out, "test", "-e", "/extended"))
    history = ok(yurt_cmd("exec", out, "ls", "/.singularity.d"))
    assert "Singularity" in history.split()


def test_errors_are_one_line(yurt_cmd, tmp_path):
    r = yurt_cmd("build", tmp_path / "x.sif", write(tmp_path / "d.def", "Bootstrap: debootstrap\n"
                                                   "OSVersion: bookworm\nMirrorURL: http://mirror.example/debian\n"))
    assert r.returncode == 255
    assert "Bootstrap: debootstrap needs root (use a docker/localimage bootstrap, or build as root)" in r.stderr
    r = yurt_cmd("build", tmp_path / "x.sif", write(tmp_path / "y.def", "Bootstrap: yum\n"))
    assert r.returncode == 255 and "not supported by yurt" in r.stderr
    r = yurt_cmd("build", tmp_path / "x.sif", write(tmp_path / "f.def", "Bootstrap: busybox\n%files\n  nothere /x\n"))
    assert r.returncode == 255 and "nothere does not exist" in r.stderr
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(("how", "code"), [("ctrl-c", 130), ("sigterm", 143)])
def test_interrupt_removes_the_temporary_sandbox(tmp_path, how, code):
    """Ctrl-C reaches the whole foreground group (yurt and the %post payload); SIGTERM (``kill PID``)
    only yurt, which must stop the step itself.  Either way: "interrupted", the shell's 128+N, nothing
    left.  (yurt SIGTERMs the step's first process; build steps have no PID namespace, so what that
    process started itself is not reached: here %post execs sleep.)"""
    sleep = "sleep 60" if how == "ctrl-c" else "exec sleep 60"
    recipe = write(tmp_path / "slow.def", f"Bootstrap: busybox\n\n%post\n    echo started\n    {sleep}\n")
    proc = subprocess.Popen([*yurt_argv(), "build", str(tmp_path / "slow.sif"), str(recipe)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "started"
        assert leftovers(tmp_path) != []
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
        else:
            os.kill(proc.pid, signal.SIGTERM)  # what kill, scancel or timeout do: yurt alone
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == code, err
    assert "yurt: error: interrupted" in err and "No child processes" not in err
    deadline = time.monotonic() + 5
    while leftovers(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert leftovers(tmp_path) == [] and not (tmp_path / "slow.sif").exists()


@pytest.mark.requires("umoci")
def test_oci_bootstrap_carries_env_entrypoint_and_cmd(yurt_cmd, busybox_rootfs_copy, tmp_path):
    (busybox_rootfs_copy / ".singularity.d" / "runscript").unlink()
    layout_dir = tmp_path / "layout"

    def umoci(*args: str) -> None:
        subprocess.run(["umoci", *args], check=True, capture_output=True)

    umoci("init", "--layout", str(layout_dir))
    umoci("new", "--image", f"{layout_dir}:v1")
    umoci("insert", "--rootless", "--image", f"{layout_dir}:v1", str(busybox_rootfs_copy), "/")
    umoci("config", "--image", f"{layout_dir}:v1", "--config.entrypoint", "echo", "--config.entrypoint", "entry:",
          "--config.cmd", "from-cmd", "--config.env", "FOO=bar baz", "--config.workingdir", "/opt")
    recipe = write(tmp_path / "oci.def", f"""\
Bootstrap: oci
From: {layout_dir}:v1

%post
    echo "FOO in post: $FOO"
""")
    out = tmp_path / "oci.sif"
    r = yurt_cmd("build", out, recipe, env={"YURT_CACHEDIR": str(tmp_path / "cache")})
    assert "FOO in post: bar baz" in ok(r)
    assert ok(yurt_cmd("run", out)).strip() == "entry: from-cmd"
    assert ok(yurt_cmd("run", out, "a", "b")).strip() == "entry: a b"
    assert ok(yurt_cmd("exec", out, "sh", "-c", 'echo "$FOO"')).strip() == "bar baz"
    assert ok(yurt_cmd("run", "--pwd", "/", out, "x")).strip() == "entry: x"
    assert ok(yurt_cmd("exec", out, "cat", "/.singularity.d/env/10-docker2singularity.sh")).count("FOO=") == 1


def test_files_never_leave_the_image(yurt_cmd, busybox_rootfs_copy, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (busybox_rootfs_copy / "merge").mkdir()
    (busybox_rootfs_copy / "merge" / "keep").write_text("kept\n")
    (busybox_rootfs_copy / "merge" / "sub").symlink_to(outside)  # absolute: means <image>/<outside>
    (busybox_rootfs_copy / "escape").symlink_to("../../../../../../..")
    src = tmp_path / "src" / "merge"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "file").write_text("in image\n")
    (src / "new").write_text("new\n")
    recipe = write(tmp_path / "f.def", f"""\
Bootstrap: localimage
From: {busybox_rootfs_copy}

%files
    src/merge /
    src/merge/new /escape/x
""")
    out = tmp_path / "sb"
    ok(yurt_cmd("build", "--sandbox", out, recipe))
    assert list(outside.iterdir()) == []
    assert (out / str(outside).lstrip("/") / "file").read_text() == "in image\n"
    assert (out / "merge" / "keep").read_text() == "kept\n" and (out / "merge" / "new").read_text() == "new\n"
    assert (out / "x").read_text() == "new\n"


def test_sif_to_sandbox_is_the_users_own(yurt_cmd, busybox_sif, tmp_path, mode):
    """``build --sandbox DIR IMG.sif`` as a rootless user, nothing cached, with a subuid range or not: the
    tree is the user's own, as Apptainer's unprivileged unsquashfs gives it, so the user can remove it with
    ``rm -rf``.  (The SIF, built rootless, records the user's own id as every file's owner, which a build's
    subuid map used to turn into an id of the range: the user could then neither move nor remove the tree.)"""
    out = tmp_path / "sbx"
    for run in ("uncached", "cached"):
        r = yurt_cmd("build", "--sandbox", out, busybox_sif, env={**MODES[mode], "YURT_CACHEDIR": str(tmp_path / "c")},
                     timeout=300)
        assert r.returncode == 0, r.stderr
        assert "belongs to you" in r.stderr and SUBUID_MSG not in r.stderr, (run, r.stderr)
        owners = {os.lstat(os.path.join(top, name)).st_uid for top, dirs, files in os.walk(out)
                  for name in dirs + files} | {out.stat().st_uid}
        assert owners == {os.getuid()}, (run, owners)
        assert yurt_cmd("exec", out, "echo", "from the sandbox").stdout == "from the sandbox\n"
        assert subprocess.run(["rm", "-rf", str(out)], capture_output=True, text=True).returncode == 0
        assert not out.exists()


def test_sandbox_build_with_steps_from_a_user_owned_sif_keeps_the_map(yurt_cmd, busybox_sif, tmp_path):
    """A build that runs %post keeps its fakeroot id map, so the SIF's owner (the user, as it was built
    rootless) is an id of the subuid range there, the tree's top directory included: moving that tree into
    place (a rename to another parent) takes the build's root, and must work (it failed with EACCES)."""
    if not has_subuid():
        pytest.skip("no /etc/subuid and /etc/subgid range (or newuidmap) for this user")
    recipe = write(tmp_path / "p.def", f"Bootstrap: localimage\nFrom: {busybox_sif}\n\n%post\n    echo made > /made\n")
    out = tmp_path / "sbx"
    r = yurt_cmd("build", "--sandbox", out, recipe, env={"YURT_CACHEDIR": str(tmp_path / "fresh-cache")}, timeout=300)
    try:
        assert r.returncode == 0, r.stderr
        assert SUBUID_MSG in r.stderr
        assert out.stat().st_uid != os.getuid() and (out / "made").stat().st_uid == os.getuid()  # 0 in the map
        assert yurt_cmd("exec", out, "cat", "/made").stdout == "made\n"
    finally:
        if out.exists():  # its files belong to the subuid range: removed as the build's root
            from yurt.builder.runner import detect_mode

            detect_mode().call(shutil.rmtree, str(out))
