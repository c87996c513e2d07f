"""The workflow clients HPC users run (Snakemake, cwltool, spython), for real, against yurt as ``apptainer``.

What these tests check is what a site gets when it installs yurt under Apptainer's names: the real
clients from PyPI, unmodified, run as the unprivileged test user with ``apptainer`` and ``singularity``
on ``PATH`` as symlinks to the installed ``yurt-apptainer``/``yurt-singularity`` (the links a site
makes, README "Using yurt as Apptainer"), and their images served by a real ``docker-registry``.

The clients live in a venv of their own (never yurt's: their dependencies must not decide what yurt
runs with), installed with pinned versions from ``tests/e2e/clients-requirements.txt``:
``make test`` creates it (``$(CLIENTS_VENV)``, /opt/yurt-clients-venv as root) and names it in
``$YURT_TEST_CLIENTS_VENV``.  Without that variable the tests look for /opt/yurt-clients-venv and
skip, saying how to make it, when it is missing; with it, a missing or broken venv fails them.

The images: a busybox tree (scripts/make-busybox-rootfs) with the host's ``bash`` and its libraries
added, because Snakemake runs every job as ``apptainer exec ... IMG bash -c CMD`` and its bash
``script:`` preamble needs bash 4's associative arrays.  It is pushed with ``yurt push`` to the
registry the tests start, and built into a local SIF with ``yurt build``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from collections.abc import Mapping
from pathlib import Path

import pytest

CLIENTS_VENV_VAR = "YURT_TEST_CLIENTS_VENV"
DEFAULT_CLIENTS_VENV = Path("/opt/yurt-clients-venv")
REQUIREMENTS = Path(__file__).with_name("clients-requirements.txt")


def clients_venv() -> Path:
    """The clients' venv: ``$YURT_TEST_CLIENTS_VENV`` (must work), else /opt/yurt-clients-venv (or skip)."""
    named = os.environ.get(CLIENTS_VENV_VAR)
    venv = Path(named) if named else DEFAULT_CLIENTS_VENV
    if not (venv / "bin" / "python").exists():
        why = (f"no clients venv at {venv}: make test creates it, or /usr/bin/python3 -m venv {venv} && "
               f"{venv}/bin/pip install -r {REQUIREMENTS}")
        if named:
            pytest.fail(f"${CLIENTS_VENV_VAR}: {why}")
        pytest.skip(why)
    return venv


def yurt_script(name: str) -> Path:
    """An installed launcher of the yurt under test (``yurt-apptainer``...), beside its ``yurt``."""
    script = Path(sysconfig.get_path("scripts")) / name
    if not (script.is_file() and os.access(script, os.X_OK)):
        pytest.fail(f"{script} is not installed: the yurt under test has no {name} launcher")
    return script


def make_apptainer_bin(directory: Path) -> Path:
    """``directory`` with ``apptainer`` and ``singularity``: symlinks to the installed compatibility launchers."""
    directory.mkdir(parents=True, exist_ok=True)
    for link, target in (("apptainer", "yurt-apptainer"), ("singularity", "yurt-singularity")):
        path = directory / link
        if not path.is_symlink():
            path.symlink_to(yurt_script(target))
    return directory


def client_env(bin_dir: Path, venv: Path, home: Path, registry_host: str,
               extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of a client run: a user's login environment, the apptainer links first on
    PATH, the clients' venv next, a home of its own, and the registry named as plain HTTP the way an
    Apptainer user does (``APPTAINER_NOHTTPS``; the clients themselves pass no such flag)."""
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "HOME": str(home),
        "USER": os.environ.get("USER", "yurttest"),
        "LOGNAME": os.environ.get("LOGNAME", "yurttest"),
        "PATH": f"{bin_dir}:{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "LANG": "C.UTF-8",
        "TMPDIR": str(home / "tmp"),
        "APPTAINER_CACHEDIR": str(home / "apptainer-cache"),
        "APPTAINER_NOHTTPS": "1",
        "XDG_CACHE_HOME": str(home / ".cache"),
    }
    (home / "tmp").mkdir(exist_ok=True)
    if extra:
        env.update(extra)
    return env


def run(argv: list[str | os.PathLike[str]], env: Mapping[str, str], cwd: Path, timeout: float = 240,
        input: str | None = None) -> subprocess.CompletedProcess:
    """Run a client; never raises on a non-zero exit (the tests assert on the result and show its output)."""
    return subprocess.run([os.fspath(a) for a in argv], env=dict(env), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False, input=input,
                          stdin=None if input is not None else subprocess.DEVNULL)


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, f"{r.args}\nrc={r.returncode}\nstdout={r.stdout[-6000:]}\nstderr={r.stderr[-6000:]}"
    return r


def add_host_bash(rootfs: Path) -> None:
    """Copy the host's /bin/bash and the shared libraries it loads (``ldd``) into ``rootfs``."""
    add_host_program(rootfs, "/bin/bash")


# What of the host's Python standard library an image with python3 leaves out: tests, GUI, packaging.
_PYTHON_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "site-packages",
                "dist-packages", "__pycache__", "pydoc_data"}


def add_host_python(rootfs: Path) -> None:
    """The host's /usr/bin/python3 (Debian's), its standard library less tests, GUI and packaging, and the
    shared libraries it and its extension modules load, into ``rootfs`` as ``/usr/bin/python3``."""
    real = Path(os.path.realpath("/usr/bin/python3"))
    version = real.name  # python3.11
    stdlib = Path("/usr/lib") / version
    dest_lib = rootfs / "usr" / "lib" / version
    shutil.copytree(stdlib, dest_lib, symlinks=True,
                    ignore=lambda _d, names: [n for n in names if n in _PYTHON_SKIP or n.startswith("config-")])
    add_host_program(rootfs, str(real))
    for module in sorted((stdlib / "lib-dynload").glob("*.so")):
        add_host_program(rootfs, str(module), copy_program=False)
    for link in ("python3", "python"):
        path = rootfs / "usr" / "bin" / link
        if path.is_symlink() or path.exists():
            path.unlink()
        path.symlink_to(version)


def add_host_program(rootfs: Path, program: str, *, copy_program: bool = True) -> None:
    """Copy the host's ``program`` (unless ``copy_program`` is false) and the shared libraries it loads
    (``ldd``) into ``rootfs`` at the same paths."""
    out = subprocess.run(["ldd", program], capture_output=True, text=True, check=True, timeout=30).stdout
    files = [program] if copy_program else []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
            files.append(parts[2])
        elif parts and parts[0].startswith("/"):
            files.append(parts[0])
    for name in files:
        dest = rootfs / name.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_symlink() or dest.exists():
            dest.unlink()
        shutil.copy2(os.path.realpath(name), dest)
        dest.chmod(0o755)
