"""Resolve container paths inside a root directory without escaping it.

Images are hostile: ``/etc/localtime`` may be a symlink to ``../../../../home``
and ``/data`` one to ``/``.  Mount destinations are therefore resolved the way
``openat2(RESOLVE_IN_ROOT)`` does it: each symlink met on the way is followed
*relative to the container root*, ``..`` never climbs above it, and the result
is a path with no symlinks left, which the kernel will resolve exactly as we
did.  The caller then opens the final component with ``O_NOFOLLOW`` and mounts
through ``/proc/self/fd/N`` so even a race cannot redirect the mount, or reads
it with :func:`yurt.image.inroot.read_file`, which follows no link at all.
"""

from __future__ import annotations

import os
import stat

MAX_SYMLINKS = 40


class EscapeError(OSError):
    """Too many symlinks, or a non-directory used as a directory."""


def split(path: str) -> list[str]:
    return [p for p in path.split("/") if p and p != "."]


def resolve_in_root(root: str, path: str) -> tuple[str, list[str]]:
    """Return ``(existing, missing)`` for container ``path`` under host ``root``.

    ``existing`` is the longest prefix that exists, as a container-absolute path
    free of symlinks; ``missing`` are the remaining components (empty when the
    whole path exists).  The final component, if it is a symlink, is followed
    too: a bind destination that is a symlink binds onto its target, as in
    Apptainer.
    """
    root = root.rstrip("/") or "/"
    resolved: list[str] = []
    pending = split(path)
    links = 0
    while pending:
        comp = pending.pop(0)
        if comp == "..":
            if resolved:
                resolved.pop()
            continue
        host = os.path.join(root, *resolved, comp)
        try:
            st = os.lstat(host)
        except FileNotFoundError:
            # Nothing below a missing directory can be a symlink, so the rest is
            # lexical; a ".." back out of the missing part resumes real resolution.
            missing = [comp]
            while pending:
                nxt = pending.pop(0)
                if nxt != "..":
                    missing.append(nxt)
                    continue
                missing.pop()
                if not missing:
                    break
            if missing:
                return "/" + "/".join(resolved), missing
            continue
        except NotADirectoryError:
            raise EscapeError(20, f"{'/' + '/'.join(resolved)} is not a directory in the container")
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                raise EscapeError(40, f"too many levels of symbolic links resolving {path}")
            target = os.readlink(host)
            if target.startswith("/"):
                resolved = []
            pending = split(target) + pending
            continue
        if pending and not stat.S_ISDIR(st.st_mode):
            raise EscapeError(20, f"{'/' + '/'.join([*resolved, comp])} is not a directory in the container")
        resolved.append(comp)
    return "/" + "/".join(resolved), []


def host_path(root: str, container_path: str) -> str:
    """Join an already-resolved container path onto the host root."""
    return os.path.join(root, *split(container_path)) if split(container_path) else root

