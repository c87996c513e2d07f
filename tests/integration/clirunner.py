"""Run ``yurt.cli.main(argv)`` in a forked child, as the ``yurt`` program would run, with a deadline.

For the property-based CLI test (``test_cli_fuzz.py``): thousands of argument vectors a minute, so
no new interpreter per example (about 40 ms) but a fork.  The forks come from a lean server
(:class:`ForkServer`, this file run as a program), not from pytest: a fork costs in proportion to
the forking process's memory, and pytest plus hypothesis triple it (on a small VM, 1 ms against
4-5 ms, the largest share of an example).  The server starts with only :mod:`yurt.cli` imported and
learns the rest from its children: each reports the modules it had to import, and the server
imports them, so later children find them loaded.  The server is the interpreter running the tests,
isolated (``-I``: no ``PYTHONPATH``, no source tree), so what it imports is the installed yurt that
``installed_yurt.yurt_argv()`` runs.

Each child is set up as ``bin/yurt`` would find itself: stdin, stdout and stderr on fds 0-2 (stdin
``/dev/null``, the other two pipes), ``sys.std*`` rebuilt with a fresh interpreter's encodings and
error handlers, default signal dispositions, the given environment and working directory, a 4 GiB
address-space limit and a 1 GiB file-size limit (a runaway read of ``/dev/zero`` fails with
MemoryError instead of eating the machine).  If a generated vector happens to be valid, whatever
yurt launches (a container, ``srun``) ``execve``s in the child, never in pytest or the server.
The child is a subreaper (``PR_SET_CHILD_SUBREAPER``): daemons yurt starts (an instance, a
namespace holder) are re-parented to it and ended once ``main()`` returns; its process group is
killed when it ends, or when the deadline passes (the outcome then says ``timed_out``).
"""

from __future__ import annotations

import ctypes
import io
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
import traceback
from typing import NamedTuple

PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)  # loaded once, by the server; its children inherit it
_LEN = struct.Struct("<Q")


class Outcome(NamedTuple):
    status: int | None  # the child's exit code; -N when signal N killed it; None when it timed out
    stdout: bytes
    stderr: bytes
    seconds: float

    @property
    def timed_out(self) -> bool:
        return self.status is None


class ForkServer:
    """The server process, driven over a pipe: ``run(argv, env, cwd)`` -> :class:`Outcome`."""

    def __init__(self, tag: str = "") -> None:
        """``tag`` is put in the server's environment (``YURT_FUZZ_TAG``), which every process it forks
        shows in ``/proc/PID/environ``: how a test finds what outlived its examples."""
        env = dict(os.environ, YURT_FUZZ_TAG=tag)
        # The yurt under test is the one installed for this interpreter (installed_yurt.yurt_argv: the
        # `yurt` script of this venv, whose #! is this interpreter), so the server is this interpreter
        # too, isolated (-I): no PYTHONPATH, no user site, not this directory, so no source tree either.
        flags = ["-I", "-B"] if sys.dont_write_bytecode else ["-I"]
        self.proc = subprocess.Popen([sys.executable, *flags, os.path.abspath(__file__)], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, close_fds=True)

    def run(self, argv: list[str], env: dict[str, str], cwd: str, timeout: float = 20.0,
            stdin_path: str = "/dev/null") -> Outcome:
        _send(self.proc.stdin.fileno(), (list(argv), dict(env), cwd, timeout, stdin_path))
        reply = _receive(self.proc.stdout.fileno())
        if reply is None:
            raise RuntimeError(f"the fork server died (status {self.proc.wait()})")
        return Outcome(*reply)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


def _send(fd: int, obj: object) -> None:
    data = pickle.dumps(obj)
    data = _LEN.pack(len(data)) + data
    while data:
        data = data[os.write(fd, data):]


def _receive(fd: int) -> object:
    def exactly(n: int) -> bytes | None:
        chunks = []
        while n:
            chunk = os.read(fd, n)
            if not chunk:
                return None
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    head = exactly(_LEN.size)
    if head is None:
        return None
    body = exactly(_LEN.unpack(head)[0])
    return None if body is None else pickle.loads(body)


def serve() -> None:
    """The server's loop: one request, one forked child, one reply."""
    import gc
    import importlib
    import resource  # noqa: F401 - for the children

    import yurt.cli  # noqa: F401 - what every child needs

    requests, replies = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    while True:
        request = _receive(requests)
        if request is None:
            return
        outcome, learned = run_one(*request)
        for name in learned:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the child will import it itself, or fail the same way
                pass
        if learned and os.environ.get("YURT_FUZZ_NOFREEZE") is None:
            gc.collect()
            gc.freeze()  # a child's collections then leave these objects (and their pages) alone
        _send(replies, tuple(outcome))


def run_one(argv: list[str], env: dict[str, str], cwd: str, timeout: float, stdin_path: str,
            limit: int = 1 << 20) -> tuple[Outcome, list[str]]:
    """Fork, run, collect stdout, stderr and the modules the child imported, within ``timeout``."""
    start = time.monotonic()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    mod_r, mod_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # never returns
        try:
            os.setpgid(0, 0)
            for fd in (out_r, err_r, mod_r):
                os.close(fd)
            _child(argv, env, cwd, stdin_path, out_w, err_w, mod_w)
        finally:
            os._exit(99)
    for fd in (out_w, err_w, mod_w):
        os.close(fd)
    try:
        os.setpgid(pid, pid)  # also here: no race with a kill below
    except OSError:
        pass
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: [], mod_r: []}
    sizes = dict.fromkeys(chunks, 0)
    open_fds = set(chunks)
    deadline = start + timeout
    timed_out = False
    try:
        while open_fds:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select(list(open_fds), [], [], left)
            for fd in ready:
                data = os.read(fd, 65536)
                if not data:
                    open_fds.discard(fd)
                elif sizes[fd] < limit:
                    chunks[fd].append(data)
                    sizes[fd] += len(data)
    finally:
        if timed_out:
            _kill_group(pid)
        _, status = os.waitpid(pid, 0)
        _kill_group(pid)  # what the child started and left in its process group
        for fd in chunks:
            os.close(fd)
    code = None if timed_out else os.waitstatus_to_exitcode(status)
    learned = b"".join(chunks[mod_r]).decode().split()
    return Outcome(code, b"".join(chunks[out_r]), b"".join(chunks[err_r]), time.monotonic() - start), learned


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _end_orphans() -> None:
    """As a subreaper: kill and reap the daemons re-parented to us (an instance, a namespace holder)."""
    try:
        os.waitpid(-1, os.WNOHANG)  # raises when there is no child at all, the usual case
    except ChildProcessError:
        return
    me = os.getpid()
    while True:
        try:
            with open(f"/proc/{me}/task/{me}/children") as f:
                orphans = [int(p) for p in f.read().split()]
        except OSError:
            orphans = []
        for p in orphans:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _child(argv: list[str], env: dict[str, str], cwd: str, stdin_path: str, out_w: int, err_w: int,
           mod_w: int) -> None:
    import resource

    fd = os.open(stdin_path, os.O_RDONLY)
    os.dup2(fd, 0)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    mods = os.dup2(mod_w, 3)
    os.closerange(4, 1024)  # nothing of the server's (its request and reply pipes)
    os.set_inheritable(mods, False)
    for sig in (signal.SIGALRM, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
                signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as the interpreter sets it at start-up
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 30, 1 << 30))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not death, past the file-size limit
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    # A fresh interpreter's streams under a UTF-8 locale: stdout strict, stderr backslashreplace.
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8", errors="strict")
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="strict")
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace",
                                  line_buffering=True)
    sys.argv = ["yurt", *argv]
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    before = len(sys.modules)  # not a set of them: that would touch (and copy) every name's page
    code = 1
    try:
        from yurt.cli import main

        code = main(list(argv))
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            sys.stderr.write(f"{e.code}\n")
            code = 1
    except BaseException:  # noqa: BLE001 - what the interpreter would print for an escaped exception
        traceback.print_exc()
        code = 1
    try:
        sys.stdout.flush()
    except BaseException:  # noqa: BLE001 - as the interpreter at exit: "Exception ignored", status 120
        sys.stderr.write("Exception ignored on flushing sys.stdout:\n")
        traceback.print_exc()
        code = 120
    try:
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001
        pass
    try:
        if len(sys.modules) != before:  # new ones are at the end: dicts keep insertion order
            os.write(mods, " ".join(list(sys.modules)[before:]).encode())
    except OSError:
        pass
    _end_orphans()
    os._exit(int(code) & 0xFF)


if __name__ == "__main__":
    serve()
