"""Instances (named containers in the background): :class:`Instance` and :func:`instances`.

``Instance.start`` and ``stop`` run ``yurt instance start|stop`` in a child process (the instance's
holder is a daemon of its own, never a child of the caller); ``exec``/``run`` join it as
``yurt exec instance://NAME`` does.  :func:`instances` reads yurt's state directory in this process:
it starts nothing.  That directory comes from this process's environment (``YURT_RUNTIMEDIR``, else
``XDG_RUNTIME_DIR``, else ``/tmp/yurt-UID``), so an Instance's ``host_env`` may not name another one.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any, Unpack

from yurt.api.containers import (
    ContainerOptions,
    Image,
    command_words,
    container_flags,
    execute,
    image_word,
    run,
    stream,
)
from yurt.api.process import Result, run_yurt
from yurt.errors import UsageError

_STATE_VARIABLES = ("YURT_RUNTIMEDIR", "XDG_RUNTIME_DIR")


@dataclass(frozen=True)
class InstanceInfo:
    """A running instance, as ``yurt instance list`` shows it."""

    name: str
    pid: int
    image: str
    """The image file it runs (a pulled reference's cached SIF)."""
    image_ref: str
    """What was named at start (``docker://...``, a path)."""
    started: str
    """Local time it started, ISO 8601."""
    stdout_log: str
    stderr_log: str
    args: tuple[str, ...] = ()


def _info(doc: Mapping[str, Any]) -> InstanceInfo:
    return InstanceInfo(name=str(doc.get("name")), pid=int(doc.get("pid") or 0), image=str(doc.get("image")),
                        image_ref=str(doc.get("image_ref") or doc.get("image")), started=str(doc.get("started")),
                        stdout_log=str(doc.get("stdout")), stderr_log=str(doc.get("stderr")),
                        args=tuple(str(a) for a in doc.get("args") or ()))


def instances(name: str | None = None) -> list[InstanceInfo]:
    """The running instances of this user on this node (only ``name``'s, if given), by name."""
    from yurt.runtime.instances import listing

    try:
        docs = listing()
    except OSError as e:
        from yurt.errors import YurtError, os_error_text

        raise YurtError(os_error_text(e)) from e
    return [_info(d) for d in docs if name is None or d.get("name") == name]


def _new_name() -> str:
    import secrets

    return f"yurt-{secrets.token_hex(5)}"


class Instance:
    """A named container running in the background, started from ``image``.

    ``Instance(image)`` only describes it; :meth:`start` starts it (``yurt instance start``, which runs
    the image's ``%startscript`` with ``args``), :meth:`stop` stops it.  As a context manager it is
    started on entry (unless this object started it already) and stopped on exit, even when the block raises::

        with Instance("db.sif", env={"PGDATA": "/data"}, binds=["/scratch/db:/data"]) as db:
            db.exec(["pg_isready"], check=True)

    ``name``: default a new unique one.  The keyword options are those of :func:`~yurt.api.execute`
    that shape a container (binds, env, fakeroot, net...); a join (:meth:`exec`, :meth:`run`) takes the
    instance's container as it is, with only its own ``env``, ``pwd``, ``cleanenv``...
    """

    def __init__(self, image: Image, name: str | None = None, *, args: str | Sequence[str | os.PathLike[str]] = (),
                 host_env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
                 timeout: float | None = None, **options: Unpack[ContainerOptions]) -> None:
        if host_env is not None and any(host_env.get(v) != os.environ.get(v) for v in _STATE_VARIABLES):
            raise UsageError("an Instance's host_env may not change YURT_RUNTIMEDIR or XDG_RUNTIME_DIR",
                             "set them in os.environ: instances() and stop() look there")
        self.image = image
        self.name = name or _new_name()
        self.args = command_words(args)
        self.host_env = host_env
        self.cwd = cwd
        self.timeout = timeout
        self.options: ContainerOptions = options
        self._started = False

    @property
    def ref(self) -> str:
        """``instance://NAME``: how yurt names it as an image to join."""
        return f"instance://{self.name}"

    def __repr__(self) -> str:
        return f"Instance({self.image!r}, name={self.name!r})"

    def start(self) -> Instance:
        """``yurt instance start``; returns once the container is up.  Raises the command's error (the name is
        taken: UsageError; a bad image: ImageError...)."""
        flags, extra = container_flags(self.options)
        argv = ["instance", "start", *flags, "--", image_word(self.image), self.name, *self.args]
        run_yurt(argv, host_env=self.host_env, extra_env=extra, cwd=self.cwd, timeout=self.timeout,
                 stdin=subprocess.DEVNULL)
        self._started = True
        return self

    def info(self) -> InstanceInfo | None:
        """Its record while it runs, else None."""
        found = instances(self.name)
        return found[0] if found else None

    @property
    def running(self) -> bool:
        return self.info() is not None

    def stop(self, *, signal: str | int = "TERM", timeout: int = 10, force: bool = False,
             missing_ok: bool = False) -> None:
        """``yurt instance stop``: ``signal`` to its init, SIGKILL after ``timeout`` seconds (at once with
        ``force``).  Stopping an instance that does not run is a UsageError unless ``missing_ok``."""
        if missing_ok and not self.running:
            return
        argv = ["instance", "stop", f"--signal={signal}", f"--timeout={int(timeout)}"]
        run_yurt([*argv, *(["--force"] if force else []), "--", self.name], host_env=self.host_env, cwd=self.cwd,
                 stdin=subprocess.DEVNULL, timeout=timeout + 60)

    def exec(self, args: str | Sequence[str | os.PathLike[str]], *, capture_output: bool = True,
             input: str | bytes | None = None, stdin: int | IO[Any] | None = None, timeout: float | None = None,
             check: bool = False, **options: Unpack[ContainerOptions]) -> Result:
        """``yurt exec instance://NAME ARGS...``: as :func:`~yurt.api.execute`, inside this instance."""
        return execute(self, args, capture_output=capture_output, input=input, stdin=stdin, timeout=timeout,
                       check=check, host_env=self.host_env, cwd=self.cwd, **options)

    def run(self, args: str | Sequence[str | os.PathLike[str]] = (), *, capture_output: bool = True,
            input: str | bytes | None = None, stdin: int | IO[Any] | None = None, timeout: float | None = None,
            check: bool = False, **options: Unpack[ContainerOptions]) -> Result:
        """``yurt run instance://NAME ARGS...``: the image's runscript, inside this instance."""
        return run(self, args, capture_output=capture_output, input=input, stdin=stdin, timeout=timeout,
                   check=check, host_env=self.host_env, cwd=self.cwd, **options)

    def stream(self, args: str | Sequence[str | os.PathLike[str]], *, check: bool = True,
               **options: Unpack[ContainerOptions]) -> Generator[str, None, int]:
        """As :func:`~yurt.api.stream`, inside this instance."""
        return stream(self, args, check=check, host_env=self.host_env, cwd=self.cwd, **options)

    def __enter__(self) -> Instance:
        if not self._started:  # an instance of that name someone else started is an error, not adopted
            self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop(missing_ok=True)
