"""Running the ``yurt`` command in a child process, and what comes back: :class:`Result` or an exception.

Every container the API starts runs in a child process, the installed ``yurt`` command of the same
installation as this package (:func:`yurt_command`): a container takes over the process that starts
it (namespaces, ``pivot_root``, ``execve``), which must never be the caller's.

Errors come back as the exceptions the command line raised, of the same class: the child writes the
class of the error it reports (its ``yurt: error:`` line) to a file handed to it (see
:func:`yurt.errors.tell_api`).  One report cannot say its class: a command missing from an image with
environment scripts is reported by the shell that sources them (exit 127); that line, where the API
captured stderr, is a :class:`~yurt.errors.PayloadNotFound`.  A payload that exits non-zero is not an
error of yurt's, whatever it prints: its status is in the :class:`Result`, and only ``check=True``
turns it into :class:`ContainerFailed`.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from yurt.errors import (
    API_ERROR_FD,
    PayloadNotFound,
    UsageError,
    YurtError,
)

#: Seconds a child gets to clean up after SIGTERM (a timeout, Ctrl-C, a stream closed early) before SIGKILL.
KILL_GRACE = 10.0
_ERROR_PREFIX = "yurt: error: "
_NOT_FOUND = ": command not found in the container"  # yurt.runtime.launcher's words, in its shell check too
_RECORDS_LIMIT = 1 << 16


def _decode(data: bytes | None) -> str | None:
    # Lossless: stdout_bytes gives the exact bytes back.  No newline translation either.
    return None if data is None else data.decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Result:
    """What a finished ``yurt`` command gave, like :class:`subprocess.CompletedProcess`.

    ``stdout``/``stderr`` are text (UTF-8; bytes that are not UTF-8 are kept as surrogate escapes, so
    :attr:`stdout_bytes` is exactly what was written), or None where they were not captured.
    """

    args: list[str]
    returncode: int
    stdout: str | None = None
    stderr: str | None = None

    @property
    def stdout_bytes(self) -> bytes | None:
        return None if self.stdout is None else self.stdout.encode("utf-8", "surrogateescape")

    @property
    def stderr_bytes(self) -> bytes | None:
        return None if self.stderr is None else self.stderr.encode("utf-8", "surrogateescape")

    def check_returncode(self) -> None:
        """Raise :class:`ContainerFailed` if the command exited non-zero."""
        if self.returncode != 0:
            raise ContainerFailed(self)


class ContainerFailed(YurtError, subprocess.CalledProcessError):
    """The container's program exited non-zero (or was killed) and the caller asked ``check=True``.

    Both a :class:`~yurt.errors.YurtError` (``exit_code`` is the program's status) and a
    :class:`subprocess.CalledProcessError` (``returncode``, ``cmd``, ``output``/``stdout``, ``stderr``);
    ``result`` is the whole :class:`Result`.
    """

    def __init__(self, result: Result) -> None:
        code = result.returncode
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        # Not super().__init__: the two bases take different arguments; each one's attributes are set here.
        Exception.__init__(self, f"the container's program {how}")
        self.message, self.hint, self.exit_code = f"the container's program {how}", None, code
        self.returncode, self.cmd, self.output, self.stderr = code, result.args, result.stdout, result.stderr
        self.result = result

    def __str__(self) -> str:
        return self.message


class ContainerTimeout(YurtError, subprocess.TimeoutExpired):
    """The ``timeout`` ran out: the command was stopped (SIGTERM, then SIGKILL after :data:`KILL_GRACE` s).

    Both a :class:`~yurt.errors.YurtError` (``exit_code`` 124, as timeout(1)) and a
    :class:`subprocess.TimeoutExpired` (``cmd``, ``timeout``, ``output``/``stdout``, ``stderr``: what it
    wrote before it was stopped, where captured); ``result`` is the :class:`Result` of the stopped command.
    """

    def __init__(self, result: Result, timeout: float) -> None:
        message = f"the command did not finish within {timeout:g} s and was stopped"
        Exception.__init__(self, message)
        self.message, self.hint, self.exit_code = message, None, 124
        self.cmd, self.timeout, self.output = result.args, timeout, result.stdout
        self.stderr = result.stderr  # type: ignore[assignment] # text, as with subprocess.run(text=True)
        self.result = result

    def __str__(self) -> str:
        return self.message


# --- the command ------------------------------------------------------------------------------------


@functools.cache
def yurt_command() -> tuple[str, ...]:
    """The command that runs the yurt this package belongs to.

    The ``yurt`` script installed with this package (in the scripts directory of the installation
    scheme whose library directory holds it: a venv's ``bin/``, ``~/.local/bin`` for ``pip --user``,
    ``/usr/bin`` for a distribution's package), as users run it.  Where the package is not installed
    that way (an editable install, a source tree on ``sys.path``), this interpreter runs
    ``yurt.cli.main`` from the very directory this package was imported from: never another yurt
    found on ``PATH``.
    """
    import sysconfig

    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../site-packages/yurt
    where = os.path.realpath(os.path.dirname(package))
    for scheme in sysconfig.get_scheme_names():
        try:
            libs = {os.path.realpath(sysconfig.get_path(k, scheme)) for k in ("purelib", "platlib")}
            scripts = sysconfig.get_path("scripts", scheme)
        except (KeyError, TypeError, ValueError):
            continue
        script = os.path.join(scripts, "yurt")
        if where in libs and os.path.isfile(script) and os.access(script, os.X_OK):
            return (script,)
    if not sys.executable:
        raise YurtError("cannot find the yurt command: this Python does not know its own interpreter "
                        "(sys.executable is empty)", "run from a normal python or venv")
    # -P: not the working directory first on sys.path (a yurt/ there must not win).
    boot = f"import sys; sys.path.insert(0, {os.path.dirname(package)!r}); from yurt.cli import main; sys.exit(main())"
    return (sys.executable, "-P", "-c", boot)


# --- running it ---------------------------------------------------------------------------------------


class _ErrorFile:
    """The memfd the child reports the class of its error in (see :func:`yurt.errors.tell_api`)."""

    def __init__(self) -> None:
        self.fd = os.memfd_create("yurt-api-errors", os.MFD_CLOEXEC)

    def environment(self, env: dict[str, str]) -> dict[str, str]:
        return {**env, API_ERROR_FD: str(self.fd)}

    def records(self) -> list[tuple[str, int, str, str]]:
        data = os.pread(self.fd, _RECORDS_LIMIT, 0).decode("utf-8", "surrogateescape")
        out = []
        for line in data.split("\n"):
            fields = line.split("\0")
            if len(fields) == 4 and fields[1].lstrip("-").isdigit():
                out.append((fields[0], int(fields[1]), fields[2], fields[3]))
        return out

    def close(self) -> None:
        os.close(self.fd)


def _error_class(name: str) -> type[YurtError]:
    """``module:qualname`` -> that YurtError subclass of yurt's own, else YurtError."""
    import importlib

    module, _, qualname = name.partition(":")
    if module != "yurt" and not module.startswith("yurt."):
        return YurtError
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return YurtError
    return obj if isinstance(obj, type) and issubclass(obj, YurtError) else YurtError


def _make_error(cls: type[YurtError], message: str, hint: str | None, code: int, result: Result) -> YurtError:
    try:  # subclasses take other arguments after the message (Interrupted's signum): only the message here
        err = cls(message)
    except TypeError:
        err = cls.__new__(cls)
        Exception.__init__(err, message)
    err.message, err.hint, err.exit_code = message, hint or None, code
    err.result = result  # type: ignore[attr-defined]
    return err


def yurt_error(result: Result, records: list[tuple[str, int, str, str]]) -> YurtError | None:
    """The error yurt itself reported for ``result``, if it reported one.

    From the error file (see :class:`_ErrorFile`): the last record whose status is the command's.  One
    report never gets there: a command missing from an image that has environment scripts is found
    missing by the shell that sources them, which prints yurt's line and exits 127; that line, last on a
    captured stderr with status 127, is a PayloadNotFound.  Any other line on stderr is the program's
    own business (a payload may print ``yurt: error:`` and exit 255 without being yurt).
    """
    for name, code, message, hint in reversed(records):
        if code == result.returncode:
            return _make_error(_error_class(name), message, hint, code, result)
    if result.returncode != 127 or not result.stderr:
        return None
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    if lines and lines[-1].startswith(_ERROR_PREFIX) and _NOT_FOUND in lines[-1]:
        return _make_error(PayloadNotFound, lines[-1][len(_ERROR_PREFIX):], None, 127, result)
    return None


def child_environment(host_env: Mapping[str, str] | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if host_env is None else host_env)
    env.update(extra or {})
    for key, value in env.items():
        if "\0" in key or "\0" in value or "=" in key or not key:
            raise UsageError(f"bad environment variable {key!r} for the yurt command", "no NUL, no '=' in names")
    return env


def _stop(proc: subprocess.Popen, grace: float) -> tuple[bytes | None, bytes | None]:
    """SIGTERM (yurt cleans up, a supervisor passes it on), SIGKILL after ``grace`` s; what it wrote."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


def run_yurt(argv: Sequence[str], *, host_env: Mapping[str, str] | None = None,
             extra_env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
             capture_output: bool = True, input: str | bytes | None = None,
             stdin: int | IO[Any] | None = None, timeout: float | None = None, check: bool = False) -> Result:
    """``yurt ARGV`` in a child process: its :class:`Result`, or the error yurt reported, raised."""
    cmd = [*yurt_command(), *argv]
    if isinstance(input, str):
        input = input.encode()
    if input is not None and stdin is not None:
        raise UsageError("give input or stdin, not both")
    pipe = subprocess.PIPE if capture_output else None
    errors = _ErrorFile()
    try:
        proc = _start(cmd, errors, child_environment(host_env, extra_env),
                      stdin=subprocess.PIPE if input is not None else stdin, stdout=pipe, stderr=pipe, cwd=cwd)
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            out, err = _stop(proc, KILL_GRACE)
            assert timeout is not None
            raise ContainerTimeout(Result(cmd, proc.returncode, _decode(out), _decode(err)), timeout) from None
        except BaseException:  # Ctrl-C in the caller, or anything else: the container does not outlive the call
            _stop(proc, KILL_GRACE)
            raise
        result = Result(cmd, proc.returncode, _decode(out), _decode(err))
        failure = yurt_error(result, errors.records())
    finally:
        errors.close()
    if failure is not None:
        raise failure
    if check:
        result.check_returncode()
    return result


def _start(cmd: list[str], errors: _ErrorFile, env: dict[str, str], **popen: Any) -> subprocess.Popen:
    for stream in (sys.stdout, sys.stderr):  # what this process printed comes before what the child prints
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    try:
        return subprocess.Popen(cmd, env=errors.environment(env), pass_fds=(errors.fd,), **popen)
    except OSError as e:
        from yurt.errors import os_error_text

        raise YurtError(f"cannot run the yurt command {cmd[0]}: {os_error_text(e)}",
                        "is yurt installed completely in this environment?")


def stream_yurt(argv: Sequence[str], *, host_env: Mapping[str, str] | None = None,
                extra_env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
                stdin: int | IO[Any] | None = subprocess.DEVNULL, check: bool = True) -> Generator[str, None, int]:
    """``yurt ARGV`` with its stdout yielded line by line (newline kept) as it comes; stderr passes through
    to this process's ``sys.stderr``.  At the end, yurt's own error is raised, and with ``check`` a
    non-zero status as :class:`ContainerFailed`; the generator's return value is the status.  Closing the
    generator early stops the command (SIGTERM, then SIGKILL)."""
    import threading

    cmd = [*yurt_command(), *argv]
    errors = _ErrorFile()
    try:
        proc = _start(cmd, errors, child_environment(host_env, extra_env), stdin=stdin, stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, cwd=cwd)
        assert proc.stdout is not None and proc.stderr is not None
        err_pipe = proc.stderr
        tail = bytearray()

        def relay() -> None:  # stderr to ours as it comes; its end kept for the error line
            for chunk in iter(lambda: os.read(err_pipe.fileno(), 65536), b""):
                if sys.stderr is not None:
                    sys.stderr.write(chunk.decode("utf-8", "replace"))
                    sys.stderr.flush()
                tail.extend(chunk)
                del tail[:-8192]

        relayer = threading.Thread(target=relay, name="yurt-api-stderr", daemon=True)
        relayer.start()
        try:
            for line in proc.stdout:
                yield line.decode("utf-8", "surrogateescape")
            proc.wait()
        except BaseException:  # GeneratorExit (closed early), Ctrl-C: the container does not outlive it
            proc.stdout.close()  # a writer blocked on a full pipe gets EPIPE
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=KILL_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
        finally:
            relayer.join(timeout=KILL_GRACE)
            proc.stdout.close()
            err_pipe.close()
        result = Result(cmd, proc.returncode, None, _decode(bytes(tail)))
        failure = yurt_error(result, errors.records())
    finally:
        errors.close()
    if failure is not None:
        raise failure
    if check:
        result.check_returncode()
    return result.returncode
