"""The wheel and the sdist, installed as users install them, on every Python the project supports.

``requires-python = ">=3.11"``: each case makes a fresh venv from one interpreter (Debian's
``/usr/bin/python3``, 3.11, the CI's; 3.12 and 3.13 where the machine has them, e.g. from pyenv),
``pip install``\\ s the wheel ``make test`` built (``$YURT_TEST_WHEEL``; dependencies come from the
package index) and starts containers with it: ``yurt --version``, ``yurt build`` of a busybox
directory, ``yurt exec`` of the directory and of the SIF with bare command names on an image
without ``/.singularity.d/env`` (so yurt itself searches ``PATH``, after ``pivot_root``), and the
import guard of ``test_no_import_after_pivot.py`` with that interpreter.  As root (kernel squashfs
mounts); Debian's 3.11 also as the test user (squashfuse), who cannot enter /root where pyenv keeps
the others.  ``$YURT_TEST_SDIST``: ``pip install yurt-X.tar.gz`` from a directory that is not the
repository must build and install a complete yurt (every package data file of the wheel).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

import pytest
from installed_yurt import MAKE_ROOTFS

pytestmark = [pytest.mark.root]

WHEEL = os.environ.get("YURT_TEST_WHEEL")
SDIST = os.environ.get("YURT_TEST_SDIST")
GUARD = Path(__file__).resolve().parent / "import_guard.py"
SYS_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PYENV = os.environ.get("PYENV_ROOT") or "/root/.pyenv"


def find_python(minor: str) -> str | None:
    """Debian's interpreter for 3.11 (what the CI's test venv uses), else pyenv's or one on PATH."""
    if minor == "3.11" and _version("/usr/bin/python3") == minor:
        return "/usr/bin/python3"
    candidates = sorted(glob.glob(f"{PYENV}/versions/{minor}.*/bin/python{minor}"), reverse=True)
    candidates += [p for p in (shutil.which(f"python{minor}", path=SYS_PATH),) if p]
    for python in candidates:
        if _version(python) == minor:
            return python
    return None


def _version(python: str) -> str | None:
    try:
        r = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True,
                           text=True, timeout=30)
    except OSError:
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def run(argv: list[object], user: str | None = None, **kw) -> subprocess.CompletedProcess:
    argv = [str(a) for a in argv]
    if user:
        argv = ["runuser", "-u", user, "--", "env", f"HOME=/home/{user}", f"PATH={SYS_PATH}", *argv]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=kw.pop("timeout", 300),
                       stdin=subprocess.DEVNULL, **kw)
    assert r.returncode == 0, f"{' '.join(argv)}: rc={r.returncode}\nstdout={r.stdout}\nstderr={r.stderr}"
    return r


@pytest.fixture
def work():
    """A scratch directory the test user can read (pytest's own tmp_path is root's, mode 0700)."""
    d = Path(tempfile.mkdtemp(prefix="yurt-pythons-", dir="/var/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def make_venv(python: str, where: Path, package: str) -> Path:
    """A fresh venv from ``python`` with ``package`` pip-installed (from a directory with nothing else)."""
    old = os.umask(0o022)
    try:
        run([python, "-m", "venv", where])
        empty = where.parent / "pip-cwd"
        empty.mkdir(exist_ok=True)
        run([where / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", package],
            cwd=empty, timeout=600)
    finally:
        os.umask(old)
    return where


def bare_rootfs(dest: Path) -> Path:
    """busybox without /.singularity.d/env: no env-script wrapper, yurt searches PATH itself."""
    run(["sh", MAKE_ROOTFS, dest])
    shutil.rmtree(dest / ".singularity.d" / "env")
    return dest


def guarded(python: Path, site: str, report: Path, *args: object) -> subprocess.CompletedProcess:
    """``yurt ARGS`` under the import guard, with this venv's interpreter."""
    report.write_text("")
    r = run([python, "-I", "-S", GUARD, site, report, *args])
    lines = report.read_text().splitlines()
    assert any(line.startswith("SWITCH ") for line in lines), lines
    assert not [line for line in lines if line.startswith(("IMPORT-AFTER-SWITCH", "REEXEC"))], lines
    return r


@pytest.mark.parametrize("minor", ["3.11", "3.12", "3.13"])
def test_wheel_on_python(minor, work, test_user):
    if not WHEEL:
        pytest.skip("YURT_TEST_WHEEL is not set (make test builds the wheel and sets it)")
    python = find_python(minor)
    if python is None:
        pytest.skip(f"no Python {minor} on this machine (looked for Debian's, {PYENV}/versions/{minor}.*, PATH)")
    venv = make_venv(python, work / "venv", WHEEL)
    yurt = venv / "bin" / "yurt"
    assert run([yurt, "--version"]).stdout.split()[-1] in Path(WHEEL).name
    assert _version(str(venv / "bin" / "python")) == minor

    rootfs = bare_rootfs(work / "rootfs")
    sif = work / "bare.sif"
    run([yurt, "build", sif, rootfs], cwd=work)
    sif.chmod(0o644)
    assert run([yurt, "exec", rootfs, "id"]).stdout.startswith("uid=0(root)")
    run([yurt, "exec", sif, "true"])  # the kernel's squashfs, as root
    assert run([yurt, "exec", sif, "ls", "-a", "/.singularity.d"]).stdout.split().count("env") == 0

    site = run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    for args in (["exec", rootfs, "id"], ["exec", "--pid", sif, "true"]):
        guarded(venv / "bin" / "python", site.stdout.strip(), work / "guard.report", *args)

    if python.startswith("/usr/bin/"):  # the test user can run it (pyenv's live under /root)
        out = run([yurt, "exec", rootfs, "id"], user=test_user.name, cwd="/").stdout
        assert out.startswith(f"uid={test_user.pw.pw_uid}(")
        run([yurt, "exec", sif, "true"], user=test_user.name, cwd="/")  # squashfuse


def test_sdist_installs_a_complete_yurt(work):
    if not (SDIST and WHEEL):
        pytest.skip("YURT_TEST_SDIST/YURT_TEST_WHEEL are not set (make test builds them and sets them)")
    venv = make_venv("/usr/bin/python3", work / "venv", SDIST)
    yurt = venv / "bin" / "yurt"
    assert run([yurt, "--version"]).stdout.split()[-1] in Path(SDIST).name
    init = run([venv / "bin" / "python", "-c", "import yurt; print(yurt.__file__)"], cwd="/").stdout.strip()
    package = Path(init).parent
    installed = {str(p.relative_to(package.parent)) for p in package.rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts}
    with zipfile.ZipFile(WHEEL) as z:
        in_wheel = {n for n in z.namelist() if n.startswith("yurt/")}
    assert installed == in_wheel, (sorted(in_wheel - installed), sorted(installed - in_wheel))
    rootfs = bare_rootfs(work / "rootfs")
    assert run([yurt, "exec", rootfs, "id"], cwd="/").stdout.startswith("uid=0(root)")
