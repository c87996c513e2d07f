"""Where a build works, and what it checks and opens before its first step.

The output is checked (and the compressor) before any work; the build runs in a fresh
directory next to OUT (or in ``$YURT_TMPDIR``), removed whatever happens, with Ctrl-C and
SIGTERM ending it cleanly ("nothing was built"); the build cache is opened, or the build
goes on without it.  The same for both recipe formats.
"""

from __future__ import annotations

import os
import signal
import tempfile

from yurt.builder.runner import detect_mode
from yurt.errors import BuildError, Interrupted, YurtError, warn


def _tmp_base(out: str) -> str:
    from yurt.config import env_lookup  # YURT_TMPDIR, else APPTAINER_TMPDIR, else SINGULARITY_TMPDIR

    hit = env_lookup(("TMPDIR",))
    base = (hit[1] if hit else "") or os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(base):
        raise BuildError(f"cannot build: the directory {base} does not exist")
    return base


def _ctl_dir(work: str) -> str:
    """A directory for the scripts bound into the container (no ':' or ',' in its path: bind syntax)."""
    ctl = os.path.join(work, "ctl")
    if ":" in ctl or "," in ctl:
        ctl = tempfile.mkdtemp(prefix="yurt-build-ctl-")
        if ":" in ctl or "," in ctl:
            raise BuildError(f"cannot build: the temporary directory {ctl} has ':' or ',' in its path",
                             "set YURT_TMPDIR or TMPDIR to another directory")
        return ctl
    os.mkdir(ctl, 0o700)
    return ctl


class _Terminated(KeyboardInterrupt):
    """SIGTERM during a build: cleaned up like Ctrl-C, but reported as SIGTERM (exit 143)."""


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise _Terminated

def default_compression() -> str:
    from yurt.image.squashfs import DEFAULT_COMPRESSION

    return DEFAULT_COMPRESSION


def check_output(out: str, *, sandbox: bool, force: bool, compression: str) -> None:
    """Refuse an existing OUT (unless ``force`` for a SIF) and an unknown compressor, before any work."""
    if os.path.lexists(out) and (sandbox or not force):
        raise BuildError(f"{out} already exists", None if sandbox else "use --force to overwrite it")
    if not sandbox:
        from yurt.image.squashfs import COMPRESSIONS

        if compression not in COMPRESSIONS:
            raise BuildError(f"unknown squashfs compression {compression!r}", f"use one of: {', '.join(COMPRESSIONS)}")


def in_workspace(out: str, make, *, conversion: bool = False) -> None:
    """``make(runner, work, ctl)`` with a fresh work directory next to OUT, removed whatever happens.

    Ctrl-C and SIGTERM end the build cleanly ("nothing was built").  ``conversion``: see
    :func:`yurt.builder.runner.detect_mode`.
    """
    runner = detect_mode(conversion=conversion)
    work = tempfile.mkdtemp(prefix=".yurt-build-", dir=_tmp_base(out))
    ctl = None
    try:
        old_term = signal.signal(signal.SIGTERM, _on_sigterm)  # cleaned up like Ctrl-C
    except ValueError:  # not the main thread
        old_term = None
    try:
        ctl = _ctl_dir(work)
        make(runner, work, ctl)
    except KeyboardInterrupt as e:
        term = isinstance(e, _Terminated)
        raise Interrupted("interrupted" + (" (SIGTERM)" if term else "") + "; nothing was built",
                          signal.SIGTERM if term else signal.SIGINT)
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        if ctl and not ctl.startswith(work + os.sep):
            runner.remove(ctl)
        runner.remove(work)


def open_cache(no_cache: bool):
    """The build cache (None, with a warning, when the cache directory cannot be used)."""
    from yurt.builder.cache import BuildCache

    try:
        return BuildCache(read=not no_cache)
    except (YurtError, OSError) as e:
        warn(f"building without the build cache: {e}")
        return None
