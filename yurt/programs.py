"""Where yurt finds the programs it runs itself: one lookup for every helper.

yurt shells out to ``squashfuse_ll``/``squashfuse``, ``unsquashfs``, ``mksquashfs``, ``tar2sqfs``,
``sqfs2tar``, ``zstd``, ``newuidmap``/``newgidmap``, ``debootstrap``, ``tar``...  Each of them sees
the image, so a fake one would decide what the container runs.  Hence two modes:

* **no site policy** (:attr:`yurt.config.Config.policy` false): the user's ``PATH``, as a shell would
  search it; the user may bring their own tools.  This is on the ``yurt exec`` path, so it costs a
  few ``stat`` calls and imports nothing.
* **a site policy in force**: only the site's ``helper_path`` (default ``/usr/libexec/yurt``, then
  ``/usr/local/sbin`` ... ``/bin``), never ``PATH``.  A candidate counts only when the program and
  every directory above it, symbolic links resolved, are owned by root and not writable by group or
  others: a user who cannot change the file cannot swap it.  The program then runs with an
  environment without ``LD_*`` variables (:func:`helper_env`), so the user's ``LD_PRELOAD`` cannot
  reach into it either.

Results are kept for the life of the process.
"""

from __future__ import annotations

import os
import stat

from yurt.errors import YurtError

_found: dict[tuple[str, object], str | None] = {}
_trusted_dirs: dict[str, bool] = {}


def _policy():
    """The loaded configuration when a site policy is in force, else None."""
    from yurt.config import load

    cfg = load()
    return cfg if cfg.policy else None


def policy_in_force() -> bool:
    """Whether a site policy is in force (:attr:`yurt.config.Config.policy`)."""
    return _policy() is not None


def find(program: str) -> str | None:
    """The path of ``program`` to run (absolute), or None when there is none yurt may use."""
    cfg = _policy()
    path_env = os.environ.get("PATH", os.defpath)
    key = (program, path_env if cfg is None else cfg.helper_path)
    if key in _found:
        return _found[key]
    if cfg is None:
        path = _search_path(program, path_env)
    else:
        path = next((p for p in (os.path.join(d, program) for d in cfg.helper_path) if _trusted_program(p)), None)
    _found[key] = path
    return path


def require(program: str, hint: str | None = None, error: type[YurtError] = YurtError) -> str:
    """:func:`find`, or ``error`` saying where yurt looked."""
    path = find(program)
    if path is not None:
        return path
    cfg = _policy()
    if cfg is None:
        raise error(f"{program} not found in PATH", hint)
    where = os.pathsep.join(cfg.helper_path)
    raise error(f"{program} not found in the site's helper directories ({where}), where a site policy requires it "
                "to be owned by root and not writable by others",
                hint or f"the administrator can install it there or set helper_path in {cfg.site_file}")


def helper_env(env: dict[str, str] | os._Environ | None = None) -> dict[str, str] | None:
    """The environment a helper runs with: None (inherit ours) without a policy; under one, ours without
    the dynamic loader's ``LD_*`` variables and with ``PATH`` set to the helper directories."""
    cfg = _policy()
    if cfg is None:
        return None
    base = os.environ if env is None else env
    clean = {k: v for k, v in base.items() if not k.startswith("LD_")}
    clean["PATH"] = os.pathsep.join(cfg.helper_path)
    return clean


def _search_path(program: str, path_env: str) -> str | None:
    """``shutil.which`` without importing shutil (and fnmatch, re) on the exec path."""
    if "/" in program:
        return program if os.path.isfile(program) and os.access(program, os.X_OK) else None
    for directory in path_env.split(os.pathsep):
        candidate = os.path.join(directory or ".", program)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return os.path.abspath(candidate)
    return None


def _safe(st: os.stat_result) -> bool:
    """Owned by root and not writable by group or others."""
    return st.st_uid == 0 and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _trusted_program(candidate: str) -> bool:
    """Whether ``candidate`` is an executable regular file that only root can change or swap."""
    real = os.path.realpath(candidate)
    try:
        st = os.stat(real)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or not _safe(st) or not os.access(real, os.X_OK):
        return False
    return trusted_dir(os.path.dirname(real))


def trusted_dir(real: str) -> bool:
    """Whether ``real`` (no symbolic links) and every directory above it are root's, not writable by others."""
    if real in _trusted_dirs:
        return _trusted_dirs[real]
    ok = True
    path = real
    while True:
        try:
            st = os.lstat(path)
        except OSError:
            ok = False
            break
        if not stat.S_ISDIR(st.st_mode) or not _safe(st):
            ok = False
            break
        if path == "/":
            break
        path = os.path.dirname(path)
    _trusted_dirs[real] = ok
    return ok
