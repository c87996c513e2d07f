"""Nothing may be imported once a container's root is the image's: every way of starting one.

After ``pivot_root`` (or a ``setns`` into a running container's mount namespace) the host's Python
library is out of reach, so a lazy ``import`` there fails: ``os.execvpe``'s ``import warnings`` made
every ``yurt exec IMAGE CMD`` with a bare command name fail for users of a regular install, while
the suite passed: it ran ``python -m yurt`` (``runpy`` imports ``warnings``) from an editable install
(whose ``.pth`` import hook loads it at start-up too).

Each case runs yurt's command line under ``import_guard.py`` (a child interpreter started with
``-I -S``, ``sys.modules`` trimmed to the bare interpreter's set, an audit hook armed by the root
switch; see its docstring) on a busybox image *without* ``/.singularity.d/env`` (so no ``/bin/sh``
wrapper does the ``PATH`` search for yurt) and with a bare command name as payload.  A case fails
when the guard saw an import after the switch, a re-executed interpreter it could not follow, or
no root switch at all (then it tested nothing).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from installed_yurt import make_run_yurt

import yurt

GUARD = Path(__file__).resolve().parent / "import_guard.py"
SITE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(yurt.__file__)))  # where `yurt` is installed

rootless = pytest.mark.skipif(os.geteuid() == 0, reason="rootless cases run as the unprivileged test user")


# --------------------------------------------------------------------------- the guard


class Guard:
    """Runs yurt commands under the import guard, all reporting into one file."""

    def __init__(self, tmp_path: Path) -> None:
        self.report = tmp_path / "import-guard.report"
        self.report.touch()
        self.cwd = tmp_path
        self.env = dict(os.environ, YURT_RUNTIMEDIR=str(tmp_path / "run"),
                        YURT_SYSCONFDIR=str(tmp_path / "no-site"), XDG_CONFIG_HOME=str(tmp_path / "config"))
        self.env.pop("PYTHONPATH", None)

    def yurt(self, *args: object, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-I", "-S", str(GUARD), SITE_DIR, str(self.report), *map(str, args)]
        return subprocess.run(cmd, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout)

    def ok(self, *args: object, expect: str = "uid=") -> subprocess.CompletedProcess:
        r = self.yurt(*args)
        assert r.returncode == 0 and expect in r.stdout, (
            f"yurt {' '.join(map(str, args))}: rc={r.returncode}\nstdout={r.stdout}\nstderr={r.stderr}\n"
            f"guard report:\n{self.report.read_text()}")
        return r

    def _holders(self) -> list[int]:
        """Processes that still hold the report open: yurt processes forked by the guarded commands."""
        pids = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == str(self.report):
                        pids.append(int(pid))
                        break
                except OSError:
                    continue
        return pids

    def check(self, switches: tuple[str, ...] = ("pivot_root",), forked: bool = False) -> list[str]:
        """Wait for every guarded process (holders exit on their own), then judge the report."""
        deadline = time.monotonic() + 30
        while (left := self._holders()) and time.monotonic() < deadline:
            time.sleep(0.1)
        lines = self.report.read_text().splitlines()
        assert not left, f"processes {left} still hold the guard's report open:\n" + "\n".join(lines)
        bad = [line for line in lines if line.startswith(("IMPORT-AFTER-SWITCH", "REEXEC"))]
        assert not bad, "imported after the root was switched:\n" + "\n".join(lines)
        seen = {line.split()[1] for line in lines if line.startswith("SWITCH ")}
        assert set(switches) <= seen, f"the guard saw no {set(switches) - seen} (so it checked nothing):\n" + \
            "\n".join(lines)
        if forked:  # the switch happened in a process yurt forked: the hook went with it
            starts = {line.split("pid=")[1] for line in lines if line.startswith("START")}
            switched = {line.split("pid=")[1] for line in lines if line.startswith("SWITCH")}
            assert switched - starts, "\n".join(lines)
        return lines


@pytest.fixture
def guard(tmp_path: Path) -> Guard:
    return Guard(tmp_path)


# --------------------------------------------------------------------------- images


@pytest.fixture(scope="module")
def bare_rootfs(busybox_rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """busybox without /.singularity.d/env: no env-script wrapper, yurt itself searches PATH."""
    dest = tmp_path_factory.mktemp("bare") / "rootfs"
    shutil.copytree(busybox_rootfs, dest, symlinks=True)
    shutil.rmtree(dest / ".singularity.d" / "env")
    return dest


@pytest.fixture(scope="module")
def bare_sif(bare_rootfs: Path) -> Path:
    if shutil.which("mksquashfs") is None:
        pytest.skip("mksquashfs missing (apt-get install squashfs-tools)")
    out = bare_rootfs.parent / "bare.sif"
    r = make_run_yurt(bare_rootfs.parent)("build", out, bare_rootfs, timeout=300)
    assert r.returncode == 0, r.stderr
    return out


@rootless
@pytest.mark.userns
def test_the_guard_catches_a_late_import(guard, bare_rootfs):
    """The guard itself: with yurt's PATH search swapped back to ``os.execvpe`` (the bug fixed in c711d6d),
    the lazy ``import warnings`` after ``pivot_root`` is reported, and it really fails there."""
    r = subprocess.run([sys.executable, "-I", "-S", "-c", _EXECVPE, str(GUARD), SITE_DIR, str(guard.report),
                        "exec", str(bare_rootfs), "id"], env=guard.env, cwd=guard.cwd, capture_output=True,
                       text=True, timeout=60, stdin=subprocess.DEVNULL)
    lines = guard.report.read_text().splitlines()
    assert any(line.startswith("IMPORT-AFTER-SWITCH warnings ") for line in lines), (r.stderr, lines)
    assert r.returncode != 0 and "No module named 'warnings'" in r.stderr, r.stderr


# The guard, with yurt.runtime.launcher's PATH search replaced by os.execvpe once that module is loaded.
_EXECVPE = """
import sys
guard = sys.argv[1]
sys.argv = [guard, *sys.argv[2:]]


class _Execvpe:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "yurt.runtime.launcher":
            return None
        from _frozen_importlib_external import PathFinder
        spec = PathFinder.find_spec(name, path, target)
        real = spec.loader.exec_module

        def exec_module(module):
            real(module)
            module._search_and_exec = lambda file, args, env: module.os.execvpe(file, args, env)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _Execvpe)
with open(guard) as f:
    exec(compile(f.read(), guard, "exec"), {"__name__": "__main__"})
"""


# --------------------------------------------------------------------------- rootless starts

ROOTLESS_EXEC = {
    "directory": [],
    "pid-namespace": ["--pid"],
    "fakeroot": ["--fakeroot"],
    "fake-ownership": ["--fakeroot", "--ignore-subuid", "--fake-ownership"],
    "contain-net-tmpfs": ["--contain", "--net", "--writable-tmpfs", "--hostname", "guarded"],
}


@rootless
@pytest.mark.userns
@pytest.mark.parametrize("mode", list(ROOTLESS_EXEC))
def test_exec_directory(guard, bare_rootfs, mode):
    guard.ok("exec", *ROOTLESS_EXEC[mode], bare_rootfs, "id")
    guard.check(forked=mode == "pid-namespace")


@rootless
@pytest.mark.userns
def test_exec_mpi_host_abi_check(guard, bare_rootfs):
    """``--mpi=host``: the ABI check (``YurtExtras.container_checks``) runs in the new root, before execve."""
    from yurt.runtime.gpu import ld_cache

    if not any(name.startswith("libmpi.so.") for name, _ in ld_cache("/")):
        pytest.skip("no host MPI library (libopenmpi3)")
    guard.ok("exec", "--mpi=host", bare_rootfs, "id")
    guard.check()


@rootless
@pytest.mark.userns
def test_error_and_notice_paths_after_the_switch(guard, bare_rootfs):
    """Reporting a missing command and a missing working directory happens inside the container."""
    r = guard.yurt("exec", bare_rootfs, "no-such-command")
    assert r.returncode == 127 and "no-such-command: command not found in the container" in r.stderr, r.stderr
    r = guard.ok("exec", "--pwd", "/no/such/dir", bare_rootfs, "id")
    assert "/no/such/dir does not exist in the container" in r.stderr
    guard.ok("run", bare_rootfs, expect="Hello")  # the runscript: an absolute path, through /bin/sh
    guard.check()


@rootless
@pytest.mark.userns
@pytest.mark.fuse
def test_exec_sif_squashfuse(guard, bare_sif):
    guard.ok("exec", bare_sif, "id")
    guard.check()


@rootless
@pytest.mark.userns
def test_exec_sif_unsquash(guard, bare_sif, tmp_path):
    guard.env["YURT_LOCAL_CACHEDIR"] = str(tmp_path / "local-cache")
    guard.ok("exec", "--unsquash", bare_sif, "id")
    guard.check()


def _hooks_dir(path: Path) -> Path:
    """One hook per OCI stage; each is /bin/true (the host's, or the image's for startContainer)."""
    path.mkdir()
    for i, stage in enumerate(("prestart", "createRuntime", "createContainer", "startContainer", "poststart",
                               "poststop")):
        (path / f"{i:02d}-{stage}.json").write_text(json.dumps(
            {"version": "1.0.0", "hook": {"path": "/bin/true", "args": ["true", stage]}, "when": {"always": True},
             "stages": [stage]}))
    return path


@rootless
@pytest.mark.userns
@pytest.mark.parametrize("pid", [False, True], ids=["no-pidns", "pidns"])
def test_exec_with_oci_hooks(guard, bare_rootfs, tmp_path, pid):
    hooks = _hooks_dir(tmp_path / "hooks")
    guard.ok("exec", *(["--pid"] if pid else []), "--hooks-dir", hooks, bare_rootfs, "id")
    guard.check(forked=True)  # the container is a child of the hook supervisor


@rootless
@pytest.mark.userns
def test_instance_start_and_join(guard, bare_rootfs):
    guard.ok("instance", "start", bare_rootfs, "guarded", expect="")
    try:
        guard.ok("exec", "instance://guarded", "id")
        guard.ok("exec", "instance://guarded", "sh", "-c", "exit 0", expect="")
        r = guard.yurt("exec", "instance://guarded", "no-such-command")
        assert r.returncode == 127, r.stderr
    finally:  # a failed check must not leave the instance running
        guard.ok("instance", "stop", "guarded", expect="")
    guard.check(switches=("pivot_root", "setns"), forked=True)


@rootless
@pytest.mark.userns
def test_sharens(guard, bare_rootfs):
    for _ in range(2):  # the first starts the holder and joins it; the second may join the same one
        guard.ok("exec", "--sharens", "--sharens-tag", "guarded", bare_rootfs, "id")
    guard.check(switches=("pivot_root", "setns"), forked=True)


BUILD_DEF = """\
Bootstrap: localimage
From: {rootfs}

%post
    touch /built-by-post
    id

%test
    test -e /built-by-post
"""

DOCKERFILE = """\
FROM scratch
COPY rootfs/ /
RUN touch /built-by-run && id
USER 1000:1000
RUN id
"""


@rootless
@pytest.mark.userns
def test_build_with_post_fakeroot(guard, bare_rootfs, tmp_path):
    recipe = tmp_path / "guarded.def"
    recipe.write_text(BUILD_DEF.format(rootfs=bare_rootfs))
    guard.env["YURT_CACHEDIR"] = str(tmp_path / "cache")
    guard.ok("build", "--sandbox", tmp_path / "out", recipe, expect="uid=0(root)")
    assert (tmp_path / "out" / "built-by-post").exists()
    guard.check(forked=True)


@rootless
@pytest.mark.userns
def test_dockerfile_build_with_run_and_user(guard, bare_rootfs, tmp_path):
    """RUN steps, the last one as the Dockerfile's USER (ids set after the pivot)."""
    context = tmp_path / "context"
    context.mkdir()
    shutil.copytree(bare_rootfs, context / "rootfs", symlinks=True)
    (context / "Dockerfile").write_text(DOCKERFILE)
    guard.env["YURT_CACHEDIR"] = str(tmp_path / "cache")
    r = guard.ok("build", "--sandbox", tmp_path / "out", context / "Dockerfile", expect="uid=1000")
    assert "uid=0(root)" in r.stdout
    assert (tmp_path / "out" / "built-by-run").exists()
    guard.check(forked=True)


# --------------------------------------------------------------------------- as root


@pytest.mark.root
@pytest.mark.parametrize("image", ["directory", "sif-kernel-mount"])
def test_root_exec(guard, bare_rootfs, bare_sif, image):
    guard.ok("exec", bare_rootfs if image == "directory" else bare_sif, "id", expect="uid=0(root)")
    guard.check()


@pytest.mark.root
def test_root_cgroup_limits(guard, bare_rootfs):
    guard.ok("exec", "--pids-limit", "50", bare_rootfs, "id", expect="uid=0(root)")
    guard.check(forked=True)  # the container is a child of the cgroup's supervisor


@pytest.mark.root
def test_root_instance_with_limits_and_sharens_on_a_sif(guard, bare_sif):
    guard.ok("instance", "start", "--pids-limit", "50", bare_sif, "guarded", expect="")
    try:
        guard.ok("exec", "instance://guarded", "id", expect="uid=0(root)")
    finally:
        guard.ok("instance", "stop", "guarded", expect="")
    guard.ok("exec", "--sharens", "--sharens-tag", "guarded-root", bare_sif, "id", expect="uid=0(root)")
    guard.check(switches=("pivot_root", "setns"), forked=True)


@pytest.mark.root
def test_root_build_with_post(guard, bare_rootfs, tmp_path):
    recipe = tmp_path / "guarded.def"
    recipe.write_text(BUILD_DEF.format(rootfs=bare_rootfs))
    guard.env["YURT_CACHEDIR"] = str(tmp_path / "cache")
    guard.ok("build", tmp_path / "out.sif", recipe, expect="uid=0(root)")
    guard.check(forked=True)
