"""The yurt under test, for every test directory: ``from installed_yurt import yurt_argv``.

The suite runs the ``yurt`` installed in the environment of the interpreter running pytest (in CI
the wheel, installed into /opt/yurt-venv: see the "What the tests run" part of tests/conftest.py),
never a source tree put on ``PYTHONPATH``.  This module has a name of its own because ``from
conftest import ...`` reaches tests/e2e/conftest.py from the e2e tests (and, once those are
collected, from the others too); tests/ is on ``sys.path`` under pytest (rootdir conftest).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent  # the tests' tree; in CI a copy without yurt/
MAKE_ROOTFS = REPO_ROOT / "scripts" / "make-busybox-rootfs"


@functools.cache
def yurt_argv() -> list[str]:
    """The ``yurt`` command under test: the script installed with the ``yurt`` this interpreter
    imports (``bin/yurt`` of its venv, whose ``#!`` is this interpreter), as users run it; else
    ``python -m yurt`` with this interpreter.  Never with a source tree on ``PYTHONPATH``."""
    script = Path(sysconfig.get_path("scripts")) / "yurt"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "yurt"]


def yurt_link(directory: Path, name: str) -> Path:
    """``directory/name``: a symbolic link to the installed ``yurt`` script, yurt started under another name
    (``apptainer``, as a site links it).  Skips the test where yurt is not installed as a script."""
    argv = yurt_argv()
    if len(argv) != 1:
        import pytest

        pytest.skip("yurt is not installed as a script (python -m yurt): no name to link to")
    link = directory / name
    link.symlink_to(argv[0])
    return link


RunYurt = Callable[..., subprocess.CompletedProcess]


def _yurt_env(env: Mapping[str, str | None] | None, replace_env: bool) -> dict[str, str]:
    base: dict[str, str] = {} if replace_env else dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value
    return base


def make_run_yurt(default_cwd: Path | None = None) -> RunYurt:
    def run_yurt(
        *args: str | os.PathLike[str],
        input: str | None = None,
        env: Mapping[str, str | None] | None = None,
        timeout: float = 60,
        cwd: str | os.PathLike[str] | None = None,
        replace_env: bool = False,
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*yurt_argv(), *map(os.fspath, args)],
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=_yurt_env(env, replace_env),
            timeout=timeout,
            cwd=cwd if cwd is not None else default_cwd,
            check=False,
        )

    return run_yurt


def yurt_on_terminal(*args: str | os.PathLike[str], env: Mapping[str, str | None] | None = None,
                     cwd: str | os.PathLike[str] | None = None, timeout: float = 120,
                     size: tuple[int, int] = (40, 120), yurt: list[str] | None = None) -> tuple[int, str]:
    """``yurt ARGS`` with stdout and stderr on a new pseudo-terminal of ``size`` (rows, columns), as a user
    at a terminal runs it (stdin is /dev/null): its exit status and everything it wrote there, escape
    sequences included, with the terminal's ``\\r\\n`` turned back into ``\\n``.  ``yurt`` replaces
    the command that runs yurt (default :func:`yurt_argv`)."""
    import fcntl
    import pty
    import select
    import struct
    import termios
    import time

    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
    full_env = _yurt_env({"TERM": "xterm-256color", "COLUMNS": None, "LINES": None, "NO_COLOR": None,
                          **(env or {})}, False)
    try:
        proc = subprocess.Popen([*(yurt or yurt_argv()), *map(os.fspath, args)], stdin=subprocess.DEVNULL,
                                stdout=terminal, stderr=terminal, env=full_env, cwd=cwd)
    finally:
        os.close(terminal)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 1)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the terminal's last writer is gone
                break
            if not chunk:
                break
            out += chunk
        else:
            proc.kill()
        status = proc.wait(timeout=30)
    finally:
        os.close(controller)
    return status, out.decode("utf-8", "replace").replace("\r\n", "\n")
