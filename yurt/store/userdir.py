"""Per-user directories in shared places (``/tmp/yurt-<uid>``, ``/var/tmp/yurt-<uid>``) that no one else can
plant.

Those names are predictable, and ``/tmp`` and ``/var/tmp`` are writable by everyone: another user can
create ``/tmp/yurt-1001`` before user 1001 runs yurt, as a symbolic link to a directory of theirs, as a
directory they own, or as a file.  Following the link, or using their directory, would let them read
and replace what yurt keeps there (lock files, instance records, unpacked images); refusing to run
would let them stop yurt.  :func:`own_dir` does neither: it uses the directory only when it is a real
directory (``lstat``, never followed) owned by the user, and otherwise falls back to a private sibling
``<name>-<random>`` that it makes itself, with one notice.  Every process of the user converges on the
same sibling (the first in sort order among those that are real directories owned by the user), so
``--sharens`` ranks and ``yurt instance list`` still find each other's state; another user cannot make
a directory owned by us, so cannot plant that one either.

Used for the runtime state directory (:func:`yurt.runtime.join.state_dir`), the node-local cache
(:func:`local_cache_dir`, ``--unsquash`` trees and their locks) and the store's node-local locks.
"""

from __future__ import annotations

import errno
import os
import stat
import sys

from yurt.errors import RuntimeSetupError

_resolved: dict[str, str] = {}


def own_dir(path: str, hint: str) -> str:
    """``path`` when it is a directory of ours (made 0700 if missing, group/other access removed), else a
    private fallback beside it (see the module docstring).  ``hint`` goes with the error when neither works."""
    path = os.path.abspath(path)
    why = _claim(path, hint)
    if why is None:
        return path
    cached = _resolved.get(path)  # the fallback already chosen (and announced) by this process
    if cached is not None and _claim(cached, hint) is None:
        return cached
    result = _resolved[path] = _fallback(path, why, hint)
    return result


def peek(path: str) -> str:
    """Where :func:`own_dir` would go, without creating anything or saying anything: ``path`` when it is
    missing or ours, else an existing fallback beside it (else ``path``, which then holds nothing of ours)."""
    path = os.path.abspath(path)
    try:
        st = os.lstat(path)
    except OSError:
        return path
    if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid():
        return path
    parent, base = os.path.split(path)
    return _existing_fallback(parent, base) or path


def _claim(path: str, hint: str) -> str | None:
    """Make or accept ``path``; None when it is ours now, else why it cannot be used."""
    try:
        os.mkdir(path, 0o700)
        return None
    except FileExistsError:
        pass
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            raise RuntimeSetupError(f"cannot create {path}: {e.strerror}", hint)
        return f"it cannot be created ({e.strerror})"
    try:
        st = os.lstat(path)
    except OSError as e:
        return f"it cannot be examined ({e.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory"
    if st.st_uid != os.getuid():
        return f"it is owned by {_name(st.st_uid)}"
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)  # ours: close it (only we could have opened it up)
    return None


def _fallback(path: str, why: str, hint: str) -> str:
    parent, base = os.path.split(path)
    chosen = _existing_fallback(parent, base)
    if chosen is None:
        mine = os.path.join(parent, f"{base}-{os.urandom(6).hex()}")
        try:
            os.mkdir(mine, 0o700)
        except OSError as e:
            raise RuntimeSetupError(f"{path} cannot be used ({why}) and no private directory can be made beside it: "
                                    f"{e.strerror}", hint)
        chosen = _existing_fallback(parent, base) or mine  # another process of ours may have made one meanwhile
        if chosen != mine:
            try:
                os.rmdir(mine)
            except OSError:
                pass
    if os.environ.get("YURT_QUIET") not in ("1", "true", "yes"):
        sys.stderr.write(f"yurt: notice: {path} is not a private directory of yours ({why}); using {chosen}\n")
    return chosen


def _existing_fallback(parent: str, base: str) -> str | None:
    """The first ``<base>-<hex>`` in ``parent`` that is a real directory owned by us (mode repaired)."""
    prefix = base + "-"
    try:
        names = sorted(n for n in os.listdir(parent) if n.startswith(prefix) and len(n) == len(prefix) + 12)
    except OSError:
        return None
    for name in names:
        candidate = os.path.join(parent, name)
        try:
            st = os.lstat(candidate)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid():
            if stat.S_IMODE(st.st_mode) & 0o077:
                os.chmod(candidate, 0o700)
            return candidate
    return None


def _name(uid: int) -> str:
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def local_cache_dir() -> str:
    """The node-local cache directory: ``$YURT_LOCAL_CACHEDIR``, ``local_cache_dir`` (:mod:`yurt.config`) or
    ``/var/tmp/yurt-<uid>``; never $HOME (often NFS).  Checked by :func:`own_dir`."""
    from yurt.config import load

    return own_dir(load().local_cache_dir, "set YURT_LOCAL_CACHEDIR to a private node-local directory")
