"""``run``, ``execute`` (``exec``) and ``stream``: a container's program in a child ``yurt`` process.

The keyword options (:class:`ContainerOptions`) are the command line's flags, spelled as Python
names; a boolean left out (None) is not passed at all, so the environment (``YURT_CONTAIN``...) and the
config file decide as they do for ``yurt exec``, while True and False are ``--contain`` and
``--contain=false``.  Flags without a keyword go in ``options`` as command-line words.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Generator, Mapping, Sequence
from typing import IO, Any, Protocol, TypedDict, Unpack

from yurt.api.process import Result, run_yurt, stream_yurt
from yurt.errors import UsageError

PathLike = str | os.PathLike[str]
Bind = str | tuple[PathLike, str] | tuple[PathLike, str, str]


class HasRef(Protocol):
    """Something that names an image to yurt: an :class:`~yurt.api.Instance` (``instance://NAME``)."""

    @property
    def ref(self) -> str: ...


Image = PathLike | HasRef


class ContainerOptions(TypedDict, total=False):
    """How the container is made: the flags of ``yurt exec`` (see ``yurt exec --help`` and the README)."""

    binds: str | Sequence[Bind]
    """``--bind``: a list of ``"src[:dst[:ro|rw]]"`` strings (comma lists too) or ``(src, dst)``/``(src, dst,
    "ro")`` tuples; one string alone is one bind (or a comma list)."""
    env: Mapping[str, str]
    """Variables set inside the container, over everything else (even ``cleanenv``), as ``YURTENV_NAME``."""
    env_file: PathLike
    contain: bool
    containall: bool
    cleanenv: bool
    pwd: str
    """Working directory inside the container."""
    home: str
    no_home: bool
    writable: bool
    writable_tmpfs: bool
    overlays: Sequence[PathLike]
    workdir: PathLike
    fakeroot: bool
    nv: bool
    rocm: bool
    app: str
    pid: bool
    ipc: bool
    net: bool
    hostname: str
    unsquash: bool
    options: Sequence[str]
    """More command-line words, before the image: ``["--memory", "2G", "--mpi=none"]``."""


_BOOLS = ("contain", "containall", "cleanenv", "no_home", "writable", "writable_tmpfs", "fakeroot", "nv", "rocm",
          "pid", "ipc", "net", "unsquash")
_VALUES = ("env_file", "pwd", "home", "workdir", "app", "hostname")
_KNOWN = frozenset(ContainerOptions.__annotations__)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _bind(item: Bind) -> str:
    if isinstance(item, str):
        return item
    if not isinstance(item, tuple) or len(item) not in (2, 3):
        raise UsageError(f"bad bind {item!r}", 'give "src[:dst[:ro]]" or a tuple (src, dst) or (src, dst, "ro")')
    src, dst = os.fspath(item[0]), item[1]
    mode = item[2] if len(item) == 3 else "rw"  # type: ignore[misc]
    for part in (src, dst):
        if not part or ":" in part or "," in part:
            raise UsageError(f"cannot bind {part!r}: yurt's bind syntax has no room for ':' or ',' in a path",
                             "bind a directory above it, or a symlink to it without those characters")
    if mode not in ("ro", "rw"):
        raise UsageError(f"bad bind mode {mode!r} in {item!r}", "use 'ro' or 'rw'")
    return f"{src}:{dst}:{mode}"


def _env_name_ok(key: str) -> bool:
    return bool(key) and key.isascii() and (key[0].isalpha() or key[0] == "_") and all(
        c.isalnum() or c == "_" for c in key)


def container_flags(options: Mapping[str, Any]) -> tuple[list[str], dict[str, str]]:
    """Keyword options -> (command-line words, variables for the child's environment)."""
    unknown = set(options) - _KNOWN
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    argv: list[str] = []
    for name in _BOOLS:
        value = options.get(name)
        if value is not None:
            argv.append(_flag(name) + ("" if value else "=false"))
    for name in _VALUES:
        value = options.get(name)
        if value is not None:
            argv.append(f"{_flag(name)}={os.fspath(value)}")
    binds = options.get("binds") or ()
    for item in [binds] if isinstance(binds, str) else binds:
        argv.append(f"--bind={_bind(item)}")
    for overlay in options.get("overlays") or ():
        argv.append(f"--overlay={os.fspath(overlay)}")
    words = options.get("options") or ()
    if isinstance(words, str):
        raise UsageError(f"options must be a list of command-line words, not the string {words!r}",
                         f"e.g. {words.split()!r}")
    argv += [str(w) for w in words]
    extra: dict[str, str] = {}
    for key, value in (options.get("env") or {}).items():
        if not _env_name_ok(key):
            raise UsageError(f"bad environment variable name {key!r}", "use letters, digits and _, not first a digit")
        extra["YURTENV_" + key] = str(value)
    return argv, extra


def image_word(image: Image) -> str:
    ref = getattr(image, "ref", None)
    if isinstance(ref, str):
        return ref
    if isinstance(image, (str, os.PathLike)):
        text = os.fspath(image)
        if text:
            return text
    raise UsageError(f"bad image {image!r}", "give a path, a docker://, oras:// or oci: reference, or an Instance")


def command_words(args: str | Sequence[str | os.PathLike[str]]) -> list[str]:
    if isinstance(args, str):  # as spython: "echo hi" is split as a shell would split it (no shell runs)
        import shlex

        return shlex.split(args)
    return [os.fspath(a) for a in args]


def action_argv(action: str, image: Image, args: str | Sequence[str | os.PathLike[str]],
                options: Mapping[str, Any]) -> tuple[list[str], dict[str, str]]:
    flags, extra = container_flags(options)
    return [action, *flags, "--", image_word(image), *command_words(args)], extra


def execute(image: Image, args: str | Sequence[str | os.PathLike[str]], *, capture_output: bool = True,
            input: str | bytes | None = None, stdin: int | IO[Any] | None = None, timeout: float | None = None,
            check: bool = False, host_env: Mapping[str, str] | None = None,
            cwd: str | os.PathLike[str] | None = None, **options: Unpack[ContainerOptions]) -> Result:
    """``yurt exec IMAGE ARGS...``: run a program inside ``image`` in a child process and wait for it.

    ``image`` is a SIF, a sandbox directory, a ``docker://``/``oras://``/``oci:`` reference (pulled into
    the cache first) or an :class:`~yurt.api.Instance`.  ``capture_output``, ``input``, ``stdin``,
    ``timeout`` and ``check`` mean what they mean for :func:`subprocess.run` (stdin is inherited unless
    given); ``host_env`` is the environment of the ``yurt`` process (default: this one's), ``cwd`` its
    working directory.  Returns a :class:`Result`; raises the command line's own error (ImageError,
    UsageError, PayloadNotFound...) when yurt reports one, :class:`ContainerTimeout` when ``timeout``
    runs out, and with ``check`` :class:`ContainerFailed` when the program exits non-zero.
    """
    argv, extra = action_argv("exec", image, args, options)
    return run_yurt(argv, host_env=host_env, extra_env=extra, cwd=cwd, capture_output=capture_output,
                    input=input, stdin=stdin, timeout=timeout, check=check)


def run(image: Image, args: str | Sequence[str | os.PathLike[str]] = (), *, capture_output: bool = True,
        input: str | bytes | None = None, stdin: int | IO[Any] | None = None, timeout: float | None = None,
        check: bool = False, host_env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None, **options: Unpack[ContainerOptions]) -> Result:
    """``yurt run IMAGE ARGS...``: the image's runscript (or Entrypoint + Cmd) with ``args``; otherwise as
    :func:`execute`."""
    argv, extra = action_argv("run", image, args, options)
    return run_yurt(argv, host_env=host_env, extra_env=extra, cwd=cwd, capture_output=capture_output,
                    input=input, stdin=stdin, timeout=timeout, check=check)


def stream(image: Image, args: str | Sequence[str | os.PathLike[str]] = (), *, action: str = "exec",
           check: bool = True, stdin: int | IO[Any] | None = subprocess.DEVNULL,
           host_env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
           **options: Unpack[ContainerOptions]) -> Generator[str, None, int]:
    """``yurt exec`` (or ``action="run"``) with the program's output yielded line by line as it comes
    (lines keep their newline; stderr goes to ``sys.stderr``): spython's ``stream=True``.

    The generator's return value is the exit status; with ``check`` (the default here, since a loop
    over lines sees no status) a non-zero one raises :class:`ContainerFailed` at the end.  yurt's own
    errors are raised as by :func:`execute`.  Leaving the loop early stops the container.
    """
    if action not in ("exec", "run"):
        raise UsageError(f"stream action {action!r}", "use 'exec' or 'run'")
    argv, extra = action_argv(action, image, args, options)
    return stream_yurt(argv, host_env=host_env, extra_env=extra, cwd=cwd, stdin=stdin, check=check)
