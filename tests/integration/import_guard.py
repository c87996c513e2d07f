"""Run yurt's command line and report every module imported after the container's root is switched.

Usage (see tests/integration/test_no_import_after_pivot.py)::

    python -I -S import_guard.py SITE_DIR REPORT_FILE YURT_ARGS...

After ``pivot_root`` (or a ``setns`` into a container's mount namespace, when joining one) the host's
Python library is out of reach: an ``import`` there fails (``ModuleNotFoundError``), or worse, loads
a module the image planted.  Which modules happen to be loaded already depends on the interpreter's
start-up (``site``, ``.pth`` files of editable installs, ``sitecustomize``), so a test run from a
developer's venv can miss what breaks for a user.  This harness removes that luck:

* ``-I -S``: no ``site``, no ``.pth`` files, no environment variables; ``SITE_DIR`` (where the
  ``yurt`` package under test is installed) is the only directory added to ``sys.path``;
* ``sys.modules`` is trimmed back to the bare interpreter's set right before ``yurt.cli.main``;
* ``yurt.syscalls.pivot_root`` and ``yurt.syscalls.setns`` are wrapped (when the module is first
  imported, by a ``sys.meta_path`` finder, so the harness itself imports nothing): once one has
  switched the root of this process, a ``sys.addaudithook`` hook writes ``IMPORT-AFTER-SWITCH
  NAME`` for every ``import`` event, i.e. every module not already loaded;
* every process yurt forks (holders, supervisors, a PID namespace's init, build steps) inherits the
  hook and the wrappers; a program started with ``exec``/``posix_spawn``/``subprocess`` that is a
  Python interpreter or yurt itself would escape the check, so it is reported as ``REEXEC``.

Lines written to ``REPORT_FILE`` (opened ``O_APPEND|O_CLOEXEC`` once, so forks share it and
payloads do not inherit it; it must exist): ``START pid=N``, ``SWITCH how pid=N``,
``IMPORT-AFTER-SWITCH name pid=N how``, ``REEXEC program``.  Only ``posix`` and ``sys`` (always
loaded) are used here.
"""

import sys

BARE = frozenset(sys.modules)  # the bare interpreter's modules, before anything of ours

import posix  # noqa: E402 - built in and already loaded: not an import (it is in BARE)
from _frozen_importlib_external import PathFinder  # noqa: E402 - frozen and already loaded as well

CLONE_NEWNS = 0x00020000
SITE_DIR, REPORT, ARGV = sys.argv[1], sys.argv[2], sys.argv[3:]
_fd = posix.open(REPORT, posix.O_WRONLY | posix.O_APPEND | posix.O_CLOEXEC)
_switched = []  # how this process's root was switched; a fork inherits it


def _say(line: str) -> None:
    posix.write(_fd, (line + "\n").encode())


def _program_name(path) -> str:
    if isinstance(path, bytes):
        path = path.decode(errors="replace")
    return str(path).rsplit("/", 1)[-1]


def _audit(event: str, args: tuple) -> None:
    if event == "import":
        if _switched:
            _say(f"IMPORT-AFTER-SWITCH {args[0]} pid={posix.getpid()} {_switched[-1]}")
    elif event in ("os.exec", "os.posix_spawn", "subprocess.Popen"):
        program, argv = args[0], args[1]
        names = [_program_name(program)]
        if argv:
            names.append(_program_name(argv[0] if not isinstance(argv, (str, bytes)) else argv))
        if any(n == "yurt" or n.startswith("python") for n in names):
            _say(f"REEXEC {names} pid={posix.getpid()}")


def _wrap(sc) -> None:
    """Mark this process once its root is the container's."""
    real_pivot_root, real_setns = sc.pivot_root, sc.setns

    def pivot_root(new_root, put_old):
        real_pivot_root(new_root, put_old)
        _switched.append("pivot_root")
        _say(f"SWITCH pivot_root pid={posix.getpid()}")

    def setns(fd, nstype=0):
        real_setns(fd, nstype)
        if nstype & CLONE_NEWNS:
            _switched.append("setns")
            _say(f"SWITCH setns pid={posix.getpid()}")

    sc.pivot_root, sc.setns = pivot_root, setns


class _WrapSyscalls:
    """A meta path finder that wraps ``yurt.syscalls`` right after its module code ran."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "yurt.syscalls":
            return None
        spec = PathFinder.find_spec(name, path, target)
        if spec is None or spec.loader is None:
            return spec
        real_exec = spec.loader.exec_module

        def exec_module(module):
            real_exec(module)
            _wrap(module)

        spec.loader.exec_module = exec_module
        return spec


def main() -> None:
    _say(f"START pid={posix.getpid()}")
    sys.path.insert(0, SITE_DIR)
    sys.meta_path.insert(0, _WrapSyscalls)
    sys.addaudithook(_audit)
    for name in [n for n in sys.modules if n not in BARE]:
        del sys.modules[name]
    sys.argv = ["yurt", *ARGV]
    from yurt.cli import main as yurt_main

    sys.exit(yurt_main(ARGV))


main()
