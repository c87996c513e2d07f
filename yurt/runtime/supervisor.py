"""Waiting for a child while passing every signal on, and exit statuses.

Used only where a process must stay behind: outside a PID namespace (its first
child is the container's init), and as that init (PID 1 reaps orphans and
relays signals to the payload, which as PID 1 itself would ignore them).

Signals are blocked and collected with ``sigwaitinfo``: no Python handlers,
no races with ``waitpid``.  A signal the terminal sent (``si_code ==
SI_KERNEL``, e.g. Ctrl-C) already reached the whole foreground process group,
payload included, so it is not sent a second time; everything sent with
``kill`` (``scancel``, ``timeout``, ``kill PID``) is forwarded.
"""

from __future__ import annotations

import os
import signal

SI_KERNEL = 0x80
# Job-control signals keep their default effect on the supervisor itself.
_NOT_FORWARDED = {signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD, signal.SIGTSTP, signal.SIGTTIN,
                  signal.SIGTTOU, signal.SIGCONT}
FORWARDED = {s for s in signal.valid_signals() if s not in _NOT_FORWARDED}
WATCHED = FORWARDED | {signal.SIGCHLD}


def block_signals() -> set[int]:
    """Block what the supervisor collects; returns the previous mask for the payload."""
    return signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)


def restore_mask(old_mask: set[int]) -> None:
    """Give the payload the signal mask yurt was started with."""
    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def exit_code(status: int) -> int:
    """Shell convention: the exit status, or 128+N for death by signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def supervise(child: int, *, reap_all: bool = False) -> int:
    """Forward signals to ``child`` until it exits; return its shell-style status."""
    while True:
        info = signal.sigwaitinfo(WATCHED)
        if info.si_signo == signal.SIGCHLD:
            while True:
                try:
                    pid, status = os.waitpid(-1 if reap_all else child, os.WNOHANG)
                except ChildProcessError:
                    return 255
                if pid == 0:
                    break
                if pid == child:
                    return exit_code(status)
        elif info.si_code != SI_KERNEL:
            try:
                os.kill(child, info.si_signo)
            except ProcessLookupError:
                pass
