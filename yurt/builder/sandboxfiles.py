"""Files into a build's sandbox, every path resolved inside its root.

``%files`` from the host and ``%files from STAGE`` (and the Dockerfile build's COPY) copy
into a tree that belongs to the image: a symlink in it may point anywhere, so every
destination, and every source in an earlier stage, is resolved inside its root
(:func:`yurt.runtime.paths.resolve_in_root`) and ``cp`` only ever writes a path that did
not exist.  Plain functions of paths, so that the build's :class:`~yurt.builder.runner.Runner`
can run them in its user namespace.
"""

from __future__ import annotations

import glob
import os

from yurt.builder import layout
from yurt.builder.agents import copy_tree
from yurt.errors import BuildError
from yurt.runtime.paths import EscapeError, host_path, resolve_in_root

# -- copying files into a sandbox -------------------------------------------------------------------


def glob_in_root(root: str, pattern: str) -> list[str]:
    """Container paths matching ``pattern`` inside ``root``; every directory listed is resolved inside it."""
    import fnmatch

    comps = [c for c in pattern.split("/") if c and c != "."]
    if not any(glob.has_magic(c) for c in comps):
        return ["/" + "/".join(comps)]
    candidates = ["/"]
    for comp in comps:
        if not glob.has_magic(comp):
            candidates = [c.rstrip("/") + "/" + comp for c in candidates]
            continue
        found = []
        for c in candidates:
            try:
                existing, missing = resolve_in_root(root, c)
            except EscapeError:
                continue
            directory = host_path(root, existing)
            if missing or not os.path.isdir(directory):
                continue
            for name in sorted(os.listdir(directory)):
                if fnmatch.fnmatchcase(name, comp) and (comp.startswith(".") or not name.startswith(".")):
                    found.append(c.rstrip("/") + "/" + name)
        candidates = found
    out = []
    for c in candidates:
        try:
            if not resolve_in_root(root, c)[1]:
                out.append(c)
        except EscapeError:
            continue
    return out


def _resolve_dst(root: str, dst: str) -> tuple[str, list[str]]:
    try:
        return resolve_in_root(root, dst)
    except EscapeError as e:
        raise BuildError(f"%files: cannot copy to {dst}: {e.strerror}")


def copy_into(src: str, name: str, root: str, dst: str, cp_args: list[str]) -> None:
    """Copy the host path ``src`` to the container path ``dst`` of ``root``, as ``cp -r`` would.

    An existing directory at ``dst`` receives ``name``; missing parents are made.  ``dst`` is
    resolved inside ``root``, so no symlink leads out of it.
    """
    existing, missing = _resolve_dst(root, dst)
    if not missing and os.path.isdir(host_path(root, existing)):
        dst = existing.rstrip("/") + "/" + name
    _copy_to(src, root, dst, cp_args)


def _copy_to(src: str, root: str, dst: str, cp_args: list[str]) -> None:
    """Copy ``src`` to exactly the container path ``dst``.

    ``cp`` only ever writes to a path that did not exist (so it meets no symlink of the
    image); a directory that exists on both sides is merged entry by entry, each resolved
    inside ``root`` again; an existing file is replaced.
    """
    existing, missing = _resolve_dst(root, dst)
    if missing:
        parent = layout.ensure_dir(root, "/" + "/".join([*existing.split("/"), *missing[:-1]]).strip("/"))
        copy_tree(["cp", *cp_args, "--", src, os.path.join(parent, missing[-1])], f"%files: copying {src}")
        return
    target = host_path(root, existing)
    follow = "L" in "".join(a for a in cp_args if not a.startswith("--"))
    src_is_dir = os.path.isdir(src) if follow else os.path.isdir(src) and not os.path.islink(src)
    if os.path.isdir(target):
        if not src_is_dir:
            raise BuildError(f"%files: cannot copy {src} over the directory {existing} in the image")
        for entry in sorted(os.listdir(src)):
            _copy_to(os.path.join(src, entry), root, existing.rstrip("/") + "/" + entry, cp_args)
        return
    os.unlink(target)
    copy_tree(["cp", *cp_args, "--", src, target], f"%files: copying {src}")


HOST_CP = ["-fLr", "--preserve=mode,timestamps"]  # as Apptainer: symlinks followed, owned by the builder
STAGE_CP = ["-a"]


def copy_host_files(pairs: list[tuple[str, str]], base_dir: str, root: str, dst_base: str = "/") -> None:
    """``%files`` (or ``%appfiles`` with ``dst_base``): host sources relative to ``base_dir``, globs allowed."""
    for src, dst in pairs:
        pattern = src if os.path.isabs(src) else os.path.join(base_dir, src)
        matches = sorted(glob.glob(pattern)) if glob.has_magic(src) else [pattern]
        if not matches or not os.path.lexists(matches[0]):
            raise BuildError(f"%files: {src} " + ("matches nothing" if glob.has_magic(src) else "does not exist")
                             + (f" (relative to {base_dir})" if not os.path.isabs(src) else ""))
        for match in matches:
            if dst == src and glob.has_magic(src):  # no destination given: the same path in the image
                target = match if os.path.isabs(src) else os.path.relpath(match, base_dir)
            else:
                target = dst
            if len(matches) > 1:
                layout.ensure_dir(root, _join(dst_base, target))
            copy_into(match, os.path.basename(match.rstrip("/")), root, _join(dst_base, target), HOST_CP)


def copy_stage_files(pairs: list[tuple[str, str]], stage: str, src_root: str, root: str) -> None:
    """``%files from STAGE``: sources resolved inside the earlier stage's sandbox."""
    for src, dst in pairs:
        matches = glob_in_root(src_root, src)
        if not matches:
            raise BuildError(f"%files from {stage}: {src} matches nothing in stage {stage}")
        for match in matches:
            try:
                existing, missing = resolve_in_root(src_root, match)
            except EscapeError as e:
                raise BuildError(f"%files from {stage}: {src}: {e.strerror}")
            if missing:
                raise BuildError(f"%files from {stage}: {match} does not exist in stage {stage}")
            target = match if dst == src and glob.has_magic(src) else dst
            if len(matches) > 1:
                layout.ensure_dir(root, target)
            name = match.rstrip("/").rsplit("/", 1)[-1] or "."
            copy_into(host_path(src_root, existing), name, root, target, STAGE_CP)


def _join(base: str, path: str) -> str:
    return "/" + "/".join([*(p for p in base.split("/") if p), *(p for p in path.split("/") if p)])


def existing_in_root(root: str, path: str) -> str | None:
    """The host path of the container path ``path`` of ``root`` if it exists (resolved inside ``root``), else None."""
    try:
        existing, missing = resolve_in_root(root, path)
    except EscapeError:
        return None
    return None if missing else host_path(root, existing)


def remove_placeholders(root: str, paths: list[str]) -> None:
    """Remove the empty mount points the launcher made in a writable sandbox (``/.post.script``, ...)."""
    for path in sorted(paths, key=len, reverse=True):
        target = existing_in_root(root, path)
        if target is None:
            continue
        try:
            st = os.lstat(target)
            if os.path.isdir(target) and not os.listdir(target):
                os.rmdir(target)
            elif not os.path.isdir(target) and st.st_size == 0 and not os.path.islink(target):
                os.unlink(target)
        except OSError:
            pass
