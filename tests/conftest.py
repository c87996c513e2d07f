"""Shared fixtures and skip rules for the whole test suite.

How the suite is run (see the Makefile's ``test`` target):

* as an unprivileged user (``yurttest`` in CI): ``pytest -m "not root" tests``
* then as root: ``pytest -m root tests``

Markers (declare them on a test or a module with ``pytestmark = pytest.mark.X``):

``@pytest.mark.root``
    Needs real root (kernel squashfs mounts, loop devices, ...). Skipped automatically
    when not running as root. The rootless CI pass deselects these.
``@pytest.mark.fuse``
    Needs a read-write openable ``/dev/fuse`` and ``squashfuse`` or ``squashfuse_ll`` on
    ``PATH``. Skipped automatically otherwise.
``@pytest.mark.userns``
    Needs unprivileged user namespaces (``unshare -Urm true`` must work). Skipped
    automatically otherwise. Most rootless ``yurt exec`` tests want this.
``@pytest.mark.requires("mksquashfs", "ch-run")``
    Needs these programs on ``PATH``; skipped (naming the missing ones) otherwise.

The helpers below are plain functions, usable in ``skipif`` too::

    from conftest import userns_available  # tests/ is on sys.path under pytest
    @pytest.mark.skipif(not userns_available(), reason="no user namespaces")

but prefer the markers above: they keep the skip reason uniform.  ``from conftest import`` works
in tests/integration and tests/unit only (under tests/e2e, ``conftest`` is that directory's own, and
once e2e is collected the name is taken for everyone): what every test module may import lives in
``tests/installed_yurt.py`` (``yurt_argv``, ``make_run_yurt``, ``REPO_ROOT``, ``MAKE_ROOTFS``).

Fixtures:

``is_root``
    ``True`` when the tests run with euid 0.
``repo_root``
    Path of the tree the tests come from (in CI a staged copy of ``tests/`` and ``scripts/``
    without the ``yurt`` package: see "What the tests run" below).
``busybox_rootfs`` (session)
    Path of a busybox root filesystem directory built by ``scripts/make-busybox-rootfs``.
    Shared by the whole session: do not modify it; use ``busybox_rootfs_copy`` for a
    private, writable copy.
``busybox_rootfs_copy``
    A private copy of the busybox rootfs in ``tmp_path``.
``busybox_sif`` (session)
    ``busybox.sif`` built from ``busybox_rootfs`` with ``yurt build`` (errors if the
    build fails; skipped if mksquashfs is missing).
``yurt_cmd``
    ``run_yurt(*args, input=None, env=None, timeout=60, cwd=None, replace_env=False)``
    runs ``yurt ARGS`` (``installed_yurt.yurt_argv``) and returns the ``subprocess.CompletedProcess``
    (text mode, stdout/stderr captured, never raises on a non-zero exit). ``env`` is overlaid
    on the current environment (a value of ``None`` removes a variable); with
    ``replace_env=True`` it is used as the whole environment.

What the tests run
    The ``yurt`` installed in the environment of the interpreter running pytest, exactly as
    users get it: ``installed_yurt.yurt_argv()`` is that environment's ``yurt`` script (the wheel's
    ``bin/yurt``), and the tests' own ``import yurt`` finds the same installation.  Nothing
    puts a source tree on ``PYTHONPATH``.  In CI (``make test`` as root) that is the wheel
    built from the tree, installed (not editable) into ``/opt/yurt-venv`` made from Debian's
    ``/usr/bin/python3``, and the tests run from a staged copy that has no ``yurt/``
    directory, so a test cannot import the source tree by accident
    (``tests/integration/test_installed_artifact.py`` checks all of this; ``make test`` sets
    ``YURT_TEST_WHEEL`` and ``YURT_TEST_SDIST`` to the artifacts it built).  A developer's
    ``make install`` venv has an editable install instead: the same commands then run the
    working tree.  Files of the package (data files, the session directory) are found through
    the installed package (``yurt.__file__``), never through ``repo_root``.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest
from installed_yurt import MAKE_ROOTFS, REPO_ROOT, RunYurt, make_run_yurt, yurt_argv  # noqa: F401 - shared

BUSYBOX = Path("/bin/busybox")


def _hypothesis_outside_the_tree() -> None:
    """The property-based tests write nothing into the tree: no example database (a profile with
    ``database=None``, which every ``@settings`` inherits), and hypothesis' other files (its
    Unicode table cache) in a directory of this session under $TMPDIR, removed at the end."""
    try:
        from hypothesis import settings
    except ImportError:  # only the modules that use hypothesis need it
        return
    settings.register_profile("yurt", database=None)
    settings.load_profile("yurt")
    if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
        import atexit
        import tempfile

        home = tempfile.mkdtemp(prefix="yurt-hypothesis-")
        os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = home
        atexit.register(shutil.rmtree, home, True)


_hypothesis_outside_the_tree()


# --------------------------------------------------------------------------- helpers


def is_root() -> bool:
    return os.geteuid() == 0


@functools.cache
def userns_available() -> bool:
    """Whether this process may create a user namespace (with a mount namespace) and map itself.

    Tries ``unshare -Urm true`` (util-linux); falls back to ``unshare(2)`` in a forked child
    when the ``unshare`` program is missing. Cached for the session.
    """
    unshare = shutil.which("unshare")
    if unshare:
        try:
            proc = subprocess.run(
                [unshare, "--user", "--map-root-user", "--mount", "true"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=20,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return False
        return proc.returncode == 0
    return _unshare_probe()


def _unshare_probe() -> bool:
    import ctypes

    clone_newuser, clone_newns = 0x10000000, 0x00020000
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            os._exit(0 if libc.unshare(clone_newuser | clone_newns) == 0 else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


@functools.cache
def fuse_unavailable_reason() -> str | None:
    """``None`` when FUSE mounts of squashfs images can work here, else why not."""
    try:
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"/dev/fuse is not usable: {exc.strerror}"
    os.close(fd)
    if not (shutil.which("squashfuse") or shutil.which("squashfuse_ll")):
        return "neither squashfuse nor squashfuse_ll is on PATH"
    return None


def fuse_available() -> bool:
    return fuse_unavailable_reason() is None


def missing_tools(*tools: str) -> list[str]:
    return [t for t in tools if shutil.which(t) is None]


# --------------------------------------------------------------------------- collection


def pytest_configure(config: pytest.Config) -> None:
    # root and fuse are also declared in pyproject.toml; declaring them twice is harmless.
    for line in (
        "root: needs real root (kernel squashfs, loop devices); skipped otherwise",
        "fuse: needs a usable /dev/fuse and squashfuse",
        "userns: needs unprivileged user namespaces (unshare -Urm); skipped otherwise",
        "requires(*programs): needs these programs on PATH; skipped otherwise",
    ):
        config.addinivalue_line("markers", line)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = is_root()
    for item in items:
        if item.get_closest_marker("root") is not None and not root:
            item.add_marker(pytest.mark.skip(reason="needs root"))
        if item.get_closest_marker("fuse") is not None:
            reason = fuse_unavailable_reason()
            if reason:
                item.add_marker(pytest.mark.skip(reason=f"needs FUSE: {reason}"))
        if item.get_closest_marker("userns") is not None and not userns_available():
            item.add_marker(pytest.mark.skip(reason="needs user namespaces (unshare -Urm true failed)"))
        tools: list[str] = []
        for mark in item.iter_markers("requires"):
            tools.extend(mark.args)
        missing = missing_tools(*tools)
        if missing:
            item.add_marker(pytest.mark.skip(reason="needs " + ", ".join(missing) + " on PATH"))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session", name="is_root")
def is_root_fixture() -> bool:
    return is_root()


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A fresh yurt cache per rootless session (as in CI), so build-cache hits never depend on earlier runs.

    Not for root: root tests run yurt as the test user, who must not inherit a root-owned directory.
    """
    if not is_root() and "YURT_CACHEDIR" not in os.environ:
        os.environ["YURT_CACHEDIR"] = str(tmp_path_factory.mktemp("yurt-cache"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


def _build_busybox_rootfs(dest: Path) -> Path:
    if not (BUSYBOX.exists() and os.access(BUSYBOX, os.X_OK)):
        pytest.skip("/bin/busybox missing (apt-get install busybox-static)")
    proc = subprocess.run(
        ["sh", str(MAKE_ROOTFS), str(dest)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"scripts/make-busybox-rootfs failed ({proc.returncode}):\n{proc.stderr}")
    return dest


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_busybox_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")


@pytest.fixture
def busybox_rootfs_copy(busybox_rootfs: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "rootfs"
    shutil.copytree(busybox_rootfs, dest, symlinks=True)
    return dest


@pytest.fixture
def yurt_cmd(tmp_path: Path) -> RunYurt:
    return make_run_yurt(default_cwd=tmp_path)


@pytest.fixture(scope="session")
def busybox_sif(busybox_rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if missing_tools("mksquashfs"):
        pytest.skip("mksquashfs missing (apt-get install squashfs-tools)")
    out = tmp_path_factory.mktemp("sif") / "busybox.sif"
    proc = make_run_yurt(default_cwd=out.parent)("build", out, busybox_rootfs, timeout=300)
    if proc.returncode != 0 or not out.is_file():
        pytest.fail(f"yurt build failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return out


# --------------------------------------------------------------------------- root tests acting as the test user


class TestUser:
    """The unprivileged test user, for root tests that must run yurt as someone else."""

    def __init__(self, pw, repo: Path) -> None:
        self.pw = pw
        self.name = pw.pw_name
        self.repo = repo  # the tests' tree (not the package: see "What the tests run")

    def yurt(
        self, *args: object, env: Mapping[str, str] | None = None, timeout: float = 300, prefix: list[str] | None = None
    ) -> subprocess.CompletedProcess:
        """``yurt ARGS`` run by this user (``prefix`` wraps the whole command, e.g. ``unshare -m``)."""
        extra = [f"{k}={v}" for k, v in (env or {}).items()]
        argv = [
            "runuser",
            "-u",
            self.name,
            "--",
            "env",
            f"HOME={self.pw.pw_dir}",
            *extra,
            *yurt_argv(),
            *map(str, args),
        ]
        return subprocess.run([*(prefix or []), *argv], capture_output=True, text=True, cwd="/", timeout=timeout)


@pytest.fixture
def test_user(repo_root: Path) -> TestUser:
    """``$YURT_TEST_USER`` (default yurttest), when it exists and can run the yurt under test."""
    import pwd

    user = os.environ.get("YURT_TEST_USER", "yurttest")
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        pytest.skip(f"the unprivileged test user {user} does not exist")
    probe = subprocess.run(["runuser", "-u", user, "--", *yurt_argv(), "version"], capture_output=True, cwd="/")
    if probe.returncode != 0:
        pytest.skip(f"{user} cannot run {' '.join(yurt_argv())} (a venv {user} can read: make test as root)")
    return TestUser(pw, repo_root)


SITE_FILE = Path("/etc/yurt/yurt.toml")


class SiteFile:
    """The site policy file of the machine, for root tests: ``install(text)`` writes it (root's, 0644,
    atomically) and returns its path, ``remove()`` deletes it."""

    path = SITE_FILE

    @staticmethod
    def install(text: str) -> Path:
        import tempfile

        SITE_FILE.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=SITE_FILE.parent, prefix=".yurt.toml.")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, SITE_FILE)
        return SITE_FILE

    @staticmethod
    def remove() -> None:
        SITE_FILE.unlink(missing_ok=True)


@pytest.fixture
def site_file():
    """:class:`SiteFile`, starting from no site file; whatever was there before is put back afterwards
    (``make test`` runs the root tests with an empty ``/etc/yurt`` of their own, so there is none)."""
    made_dir = not SITE_FILE.parent.exists()
    before = SITE_FILE.read_bytes() if SITE_FILE.exists() else None
    before_mode = SITE_FILE.stat().st_mode & 0o7777 if before is not None else None
    try:
        SiteFile.remove()
        yield SiteFile
    finally:
        if before is None:
            SITE_FILE.unlink(missing_ok=True)
        else:
            SITE_FILE.write_bytes(before)
            os.chmod(SITE_FILE, before_mode)
            os.chown(SITE_FILE, 0, 0)
        if made_dir:
            try:
                SITE_FILE.parent.rmdir()
            except OSError:
                pass  # something else lives there now
