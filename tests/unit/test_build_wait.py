"""Waiting for a build step's child when Ctrl-C lands: the interleavings made deterministic.

Python raises KeyboardInterrupt at the first bytecode after a signal arrived, so with
Ctrl-C (sent to yurt and the step alike) it can come while ``waitpid`` blocks, or just
after ``waitpid`` reaped the child, before its status reached the caller.  The second
case used to end the build with "No child processes" (ECHILD from a second ``waitpid``).
Real children and real signals; only the moment the signal lands is chosen here.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from yurt.builder import runner


def _child(seconds: float) -> int:
    pid = os.fork()
    if pid == 0:
        time.sleep(seconds)
        os._exit(0)
    return pid


def _gone(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


@pytest.fixture
def sigint_raises(monkeypatch):
    """Ctrl-C as Python's default: KeyboardInterrupt (restored afterwards)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def test_ctrl_c_right_after_waitpid_reaped_the_child(monkeypatch, sigint_raises):
    pid = _child(0)
    real_waitpid = os.waitpid
    calls = []

    def waitpid(p, flags):
        result = real_waitpid(p, flags)
        calls.append((flags, result))
        if not flags and len(calls) == 1:
            signal.raise_signal(signal.SIGINT)  # a real SIGINT, landing once the child is reaped
        return result

    monkeypatch.setattr(os, "waitpid", waitpid)
    with pytest.raises(KeyboardInterrupt):
        runner._wait(pid)
    assert calls[0] == (0, (pid, 0))  # the first waitpid did reap it
    assert _gone(pid)


def test_ctrl_c_while_the_child_still_runs(monkeypatch, sigint_raises):
    pid = _child(60)
    real_waitpid = os.waitpid
    statuses = []

    def waitpid(p, flags):
        if not flags and not statuses:
            statuses.append(None)
            signal.raise_signal(signal.SIGINT)  # lands before the blocking wait
        result = real_waitpid(p, flags)
        statuses.append(result)
        return result

    monkeypatch.setattr(os, "waitpid", waitpid)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        runner._wait(pid)
    assert time.monotonic() - t0 < 30  # stopped, not waited out
    assert statuses[-1][0] == pid and os.waitstatus_to_exitcode(statuses[-1][1]) == -signal.SIGTERM
    assert _gone(pid)


def test_a_second_ctrl_c_while_stopping_still_reaps(monkeypatch, sigint_raises):
    pid = _child(60)
    real_waitpid = os.waitpid
    blocking = []

    def waitpid(p, flags):
        if not flags:
            blocking.append(p)
            if len(blocking) <= 2:  # the first wait, then the one after the SIGTERM
                signal.raise_signal(signal.SIGINT)
        return real_waitpid(p, flags)

    monkeypatch.setattr(os, "waitpid", waitpid)
    with pytest.raises(KeyboardInterrupt):
        runner._wait(pid)
    assert len(blocking) in (2, 3) and _gone(pid)  # 2 when the SIGTERM had already ended it


def test_a_plain_wait_returns_the_status():
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    assert os.waitstatus_to_exitcode(runner._wait(pid)) == 7
