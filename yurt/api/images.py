"""``pull``, ``build`` and ``inspect``: images, through the same code as ``yurt pull|build|inspect``.

``pull`` and ``inspect`` run in this process: they start no container, and the exceptions are the
command's own objects (with every attribute, a RegistryError's ``status`` and ``codes`` too), not
rebuilt from a line of text.  ``pull`` is ``yurt pull``'s own code (:func:`yurt.cli.pull.main`),
so it reads the same ``YURT_*`` variables and the same cache and policy, and writes the image the
same way (atomically; ``force`` to overwrite).  ``build`` runs ``yurt build`` in a child process:
a build runs containers (``%post``, ``RUN``).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from yurt.api.process import run_yurt
from yurt.errors import UsageError, YurtError


def _os_errors_as_yurt(call, *args: Any) -> Any:
    """``call(*args)``, an OSError becoming the YurtError the command line would print it as."""
    try:
        return call(*args)
    except OSError as e:
        from yurt.errors import os_error_text

        raise YurtError(os_error_text(e)) from e


def pull(ref: str, dest: str | os.PathLike[str] | None = None, *, force: bool = False, arch: str | None = None,
         platform: str | None = None, insecure: bool | None = None, ca_file: str | os.PathLike[str] | None = None,
         compression: str | None = None, progress: bool = False) -> Path:
    """``yurt pull [DEST] REF``: fetch ``docker://``, ``oras://``, ``oci:DIR[:TAG]``, ``oci-archive:FILE``
    or ``docker-archive:FILE`` into the cache and write it out as a SIF; returns the SIF's path.

    ``dest``: the file to write; a directory puts the default name in it; None writes the default name
    (``NAME_TAG.sif``) into the working directory, as ``yurt pull REF`` does.  An existing file is an
    error unless ``force`` (which also downloads and converts again).  ``insecure``: plain HTTP or
    unverified TLS (None: as ``YURT_INSECURE``/``YURT_NOHTTPS`` say).  ``progress``: progress bars on
    stderr when it is a terminal (off by default in a library).
    """
    from yurt.cli import Context
    from yurt.cli import pull as command

    if not isinstance(ref, str) or not ref:
        raise UsageError(f"bad reference {ref!r}", "give docker://HOST/REPO:TAG, oras://..., oci:DIR[:TAG]...")
    if dest is None:
        target = command.default_name(ref)
    else:
        target = os.fspath(dest)
        if os.path.isdir(target):
            target = os.path.join(target, command.default_name(ref))
    argv = ["--force"] if force else []
    for flag, value in (("arch", arch), ("platform", platform), ("ca-file", ca_file), ("compression", compression)):
        if value is not None:
            argv.append(f"--{flag}={os.fspath(value)}")
    if insecure is not None:
        argv.append("--insecure" if insecure else "--insecure=false")
    _os_errors_as_yurt(command.main, "pull", [*argv, "--", target, ref], Context(quiet=not progress))
    return Path(os.path.abspath(target))


def build(recipe: str | os.PathLike[str], dest: str | os.PathLike[str], *, sandbox: bool = False,
          force: bool = False, notest: bool = False, build_args: Mapping[str, str] | None = None,
          build_arg_file: str | os.PathLike[str] | None = None, fakeroot: bool | None = None,
          compression: str | None = None, no_cache: bool = False, dockerfile: str | os.PathLike[str] | None = None,
          target: str | None = None, options: Sequence[str] = (), capture_output: bool = True,
          timeout: float | None = None, host_env: Mapping[str, str] | None = None,
          cwd: str | os.PathLike[str] | None = None) -> Path:
    """``yurt build DEST RECIPE``: build a SIF (or with ``sandbox`` a directory) from a definition file, a
    Dockerfile or a root filesystem directory, in a child process; returns ``dest`` (made absolute
    against ``cwd``).

    ``build_args`` fill ``{{ KEY }}`` in the recipe (``--build-arg KEY=VALUE``); ``options`` are more
    command-line words (``["--tag", "x"]``).  With ``capture_output`` (the default) the build's output
    is kept, not printed: a failure raises the command's error (a BuildError...) whose ``result``
    holds it.
    """
    argv = ["build"]
    for flag, on in (("sandbox", sandbox), ("force", force), ("notest", notest), ("no-cache", no_cache)):
        if on:
            argv.append(f"--{flag}")
    if fakeroot is not None:
        argv.append("--fakeroot" if fakeroot else "--fakeroot=false")
    for key, value in (build_args or {}).items():
        if not key or "=" in key:
            raise UsageError(f"bad build argument name {key!r}")
        argv.append(f"--build-arg={key}={value}")
    for flag, text in (("build-arg-file", build_arg_file), ("compression", compression),
                       ("dockerfile", dockerfile), ("target", target)):
        if text is not None:
            argv.append(f"--{flag}={os.fspath(text)}")
    if isinstance(options, str):
        raise UsageError(f"options must be a list of command-line words, not the string {options!r}")
    out, source = os.fspath(dest), os.fspath(recipe)
    argv += [*map(str, options), "--", out, source]
    run_yurt(argv, host_env=host_env, cwd=cwd, capture_output=capture_output, timeout=timeout,
             stdin=subprocess.DEVNULL)
    base = os.fspath(cwd) if cwd is not None else os.getcwd()
    return Path(os.path.normpath(os.path.join(base, out)))


def inspect(image: str | os.PathLike[str]) -> dict[str, Any]:
    """What ``yurt inspect --json IMAGE`` shows, as a dict: ``labels``, ``environment`` (the env scripts by
    name), ``runscript``, ``deffile``, ``helpfile``, ``partitions``, ``digest``, ``format``, ``size``,
    ``header`` (SIF), ``warnings``...  Read without running the image (a SIF's files with ``unsquashfs``).
    """
    from yurt.image.inspect import inspect_image

    return _os_errors_as_yurt(inspect_image, _local(image))


def _local(image: str | os.PathLike[str]) -> str:
    text = os.fspath(image)
    from yurt.image.source import PULLED_SCHEMES

    if text.startswith((*PULLED_SCHEMES, "instance://")):
        raise UsageError(f"inspect reads a local image, not {text!r}", "pull it first: yurt.api.pull(ref)")
    return text
