"""The suite tests what users install: the wheel, installed (not editable), never the source tree.

``make test`` (as root, CI) builds the sdist and from it the wheel, installs the wheel into the test
venv and sets ``YURT_TEST_WHEEL`` to it; the tests run from a staged copy of ``tests/`` and
``scripts/`` without the ``yurt`` package.  These checks make sure that stays true: a test that
imported the working tree, or ran ``python -m yurt`` with the tree on ``PYTHONPATH``, would test
code no user runs (the lazy ``import warnings`` after ``pivot_root`` that broke every installed
``yurt exec`` went unnoticed that way).  Without ``YURT_TEST_WHEEL`` (a developer's editable
install) they are skipped.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from installed_yurt import REPO_ROOT, yurt_argv

import yurt

WHEEL = os.environ.get("YURT_TEST_WHEEL")


def _check_the_installed_wheel() -> None:
    if not WHEEL:
        pytest.skip("YURT_TEST_WHEEL is not set: a development run (make test as root tests the wheel)")
    wheel = Path(WHEEL)
    assert wheel.is_file(), f"YURT_TEST_WHEEL={WHEEL} does not exist"
    purelib = Path(sysconfig.get_paths()["purelib"]).resolve()
    package = Path(yurt.__file__).resolve().parent

    # The yurt the tests import is the venv's, and no source tree can shadow it.
    assert package == purelib / "yurt", f"yurt imported from {package}, not from {purelib}"
    assert "PYTHONPATH" not in os.environ
    assert not (REPO_ROOT / "yurt").exists(), f"the test tree {REPO_ROOT} has a yurt package"
    for entry in sys.path:
        where = Path(entry or os.getcwd())
        if (where / "yurt" / "__init__.py").exists():
            assert where.resolve() == purelib, f"{where} on sys.path has a yurt package"

    # Installed from this very wheel, not editable.
    dist = importlib.metadata.distribution("yurt")
    direct = json.loads(dist.read_text("direct_url.json") or "{}")
    assert not direct.get("dir_info", {}).get("editable"), f"an editable install: {direct}"
    assert "archive_info" in direct and direct.get("url", "").endswith("/" + wheel.name), direct
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    recorded = direct["archive_info"].get("hashes", {}).get("sha256") or \
        direct["archive_info"].get("hash", "").partition("sha256=")[2]
    if recorded:  # pip records it for archives it hashed
        assert recorded == digest, "the installed yurt is not the wheel under test"
    assert dist.version == yurt.__version__ and wheel.name.startswith(f"yurt-{dist.version}-")
    assert not list(purelib.glob("__editable__*yurt*")), "an editable finder for yurt is installed"

    # Every file of the package in the wheel is installed, byte for byte, and nothing else is.
    installed = {str(f) for f in dist.files or [] if str(f).startswith("yurt/") and "__pycache__" not in str(f)}
    with zipfile.ZipFile(wheel) as z:
        in_wheel = {n for n in z.namelist() if n.startswith("yurt/") and not n.endswith("/")}
        assert installed == in_wheel
        changed = [n for n in in_wheel if z.read(n) != (purelib / n).read_bytes()]
    assert not changed, f"installed files differ from the wheel's: {changed}"

    # The command the tests run is the venv's `yurt` script, started by this interpreter.
    argv = yurt_argv()
    assert len(argv) == 1 and Path(argv[0]).parent == Path(sysconfig.get_path("scripts")), argv
    with open(argv[0]) as f:
        shebang = f.readline()[2:].strip()
    assert Path(shebang).resolve() == Path(sys.executable).resolve(), shebang
    probe = subprocess.run([shebang, "-c", "import yurt; print(yurt.__file__)"], capture_output=True, text=True,
                           cwd="/", env={"PATH": "/usr/bin:/bin"}, check=True)
    assert Path(probe.stdout.strip()).resolve().parent == package
    out = subprocess.run([*argv, "version"], capture_output=True, text=True, cwd="/", check=True).stdout
    assert dist.version in out


def test_the_suite_runs_the_installed_wheel():
    _check_the_installed_wheel()


@pytest.mark.root
def test_the_root_pass_runs_the_installed_wheel(test_user):
    _check_the_installed_wheel()
    # the test user runs the same installation
    r = test_user.yurt("version", timeout=60)
    assert r.returncode == 0 and yurt.__version__ in r.stdout, r.stderr
