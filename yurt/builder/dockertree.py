"""What a Dockerfile build does to a stage's tree and reads from it, as plain functions.

COPY/ADD's placement of staged sources (resolved inside the tree, then owner and mode),
ADD's local archives, WORKDIR's directory, and the ids that ``USER`` and ``--chown`` name,
looked up in the image's ``/etc/passwd`` and ``/etc/group``.  The functions that write the
tree take only plain values, so that the build's :class:`~yurt.builder.runner.Runner` can
run them in its user namespace; the steps that call them are :mod:`yurt.builder.dockerbuild`.
"""

from __future__ import annotations

import os

from yurt.builder import layout
from yurt.builder.sandboxfiles import _copy_to, existing_in_root
from yurt.errors import BuildError
from yurt.runtime.paths import EscapeError, host_path, resolve_in_root

# -- copying into the tree (run through the Runner: these take only plain values) -----------------------


def place(sources: list[tuple[str, bool]], root: str, dest: str, into_dir: bool, owner: tuple[int, int] | None,
          chmod: int | None) -> None:
    """Copy host ``sources`` (``(path, copy its content)``) to the container path ``dest`` as COPY does.

    One plain source and ``dest`` not ending in ``/`` (``into_dir`` false): ``dest`` is the
    file, or an existing directory receives it.  Otherwise ``dest`` is a directory.  Then the
    copies get ``owner`` and ``chmod``.
    """
    copied: list[str] = []
    if len(sources) == 1 and not sources[0][1] and not into_dir:
        src = sources[0][0]
        target = dest
        try:
            existing, missing = resolve_in_root(root, dest)
        except EscapeError as e:
            raise BuildError(f"cannot copy to {dest}: {e.strerror}")
        if not missing and os.path.isdir(host_path(root, existing)) and not os.path.islink(host_path(root, existing)):
            target = existing.rstrip("/") + "/" + os.path.basename(src)
        _copy_to(src, root, target, ["-a"])
        copied.append(target)
    else:
        layout.ensure_dir(root, dest)
        for src, content in sources:
            names = sorted(os.listdir(src)) if content else [os.path.basename(src.rstrip("/"))]
            for name in names:
                target = dest.rstrip("/") + "/" + name
                _copy_to(os.path.join(src, name) if content else src, root, target, ["-a"])
                copied.append(target)
    if owner is None and chmod is None:
        return
    for path in copied:
        # The copy itself, never what it points to: a copied symlink may lead anywhere in the image.
        parent, _, name = path.rstrip("/").rpartition("/")
        directory = existing_in_root(root, parent or "/")
        if directory is None or not name:
            continue
        top = os.path.join(directory, name)
        if not os.path.lexists(top):
            continue
        _fix(top, owner, chmod)
        if os.path.isdir(top) and not os.path.islink(top):
            for dirpath, dirnames, filenames in os.walk(top):
                for name in dirnames + filenames:
                    _fix(os.path.join(dirpath, name), owner, chmod)


def _fix(path: str, owner: tuple[int, int] | None, chmod: int | None) -> None:
    if owner is not None:
        os.lchown(path, *owner)
    if chmod is not None and not os.path.islink(path):
        os.chmod(path, chmod)


_ARCHIVE_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd", b"\x04\x22\x4d\x18")


def is_archive(path: str) -> bool:
    """Whether ADD unpacks ``path``: a tar, plain or gzip/bzip2/xz/zstd/lz4-compressed, told by its content
    (as Docker does: a file merely named ``.tar.gz`` is copied as it is)."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return head.startswith(_ARCHIVE_MAGIC) or head[257:262] == b"ustar"


def extract_archive(archive: str, dest: str) -> None:
    """ADD's local archive: unpacked (compression sniffed by tar) into the private staging directory.

    Modes are kept as the archive has them (not our umask); owners become root's when the staged
    files are copied into the tree.
    """
    import subprocess

    os.makedirs(dest, exist_ok=True)
    from yurt.programs import require

    tar = require("tar", None, BuildError)
    proc = subprocess.run([tar, "--extract", f"--file={archive}", f"--directory={dest}", "--no-same-owner",
                           "--same-permissions"], stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"ADD: cannot unpack {os.path.basename(archive)}: {proc.stderr.strip()[-300:]}")


def _lookup_ids(root: str, spec: str, where: str) -> tuple[int, int]:
    """``--chown=USER[:GROUP]`` to numbers, names looked up in the image (as Docker does)."""
    user, _, group = spec.partition(":")

    def find(path: str, name: str, field: int) -> int | None:
        raw = layout.read_file(root, path, 8 << 20, follow_links=True)
        for line in (raw or b"").decode("utf-8", "replace").splitlines():
            parts = line.split(":")
            if len(parts) > field and parts[0] == name and _number(parts[field]):
                return int(parts[field])
        return None

    if _number(user):
        uid = int(user)
        default_gid = uid
    else:
        uid = find("/etc/passwd", user, 2)
        if uid is None:
            raise BuildError(f"{where} --chown={spec}: no user {user!r} in the image's /etc/passwd")
        default_gid = find("/etc/passwd", user, 3)
    if not group:
        return uid, default_gid if default_gid is not None else uid
    gid = int(group) if _number(group) else find("/etc/group", group, 2)
    if gid is None:
        raise BuildError(f"{where} --chown={spec}: no group {group!r} in the image's /etc/group")
    return uid, gid


def _user_ids(root: str, user: str, where: str) -> tuple[list[int], str]:
    """``USER name|uid[:group|gid]`` -> ``[uid, gid, *supplementary gids]`` and the home directory.

    As runc does: the primary group is the passwd entry's (0 for a uid with no entry) unless a
    group is given; the supplementary groups are those of /etc/group listing the user's name.
    """
    name, _, group = user.partition(":")
    passwd = [line.split(":") for line in _image_text(root, "/etc/passwd").splitlines()]
    entry = next((p for p in passwd if len(p) > 5 and (p[0] == name or (_number(name) and p[2] == name))), None)
    if entry is None and not _number(name):
        raise BuildError(f"{where} USER {user}: no user {name!r} in the image's /etc/passwd")
    uid = int(name) if _number(name) else int(entry[2]) if _number(entry[2]) else 0
    gid = int(entry[3]) if entry is not None and _number(entry[3]) else 0
    if group:
        gid = _lookup_ids(root, f"{uid}:{group}", where)[1]
    login = entry[0] if entry is not None else None
    groups = []
    for line in _image_text(root, "/etc/group").splitlines():
        parts = line.split(":")
        if login and len(parts) > 3 and login in parts[3].split(",") and _number(parts[2]):
            groups.append(int(parts[2]))
    home = entry[5] if entry is not None and entry[5] else "/"
    return [uid, gid, *sorted(set(groups) - {gid})], home


def _number(field: str) -> bool:
    """An id field of the image's passwd/group that int() takes: ASCII digits only ("²".isdigit() is true)."""
    return field.isascii() and field.isdigit()


def _image_text(root: str, path: str) -> str:
    return (layout.read_file(root, path, 8 << 20, follow_links=True) or b"").decode("utf-8", "replace")


def _make_dir(root: str, path: str, owner: tuple[int, int] | None) -> None:
    target = layout.ensure_dir(root, path)
    if owner is not None:
        os.lchown(target, *owner)


def _parse_chmod(value: str, where: str) -> int:
    try:
        mode = int(value, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o7777:
        raise BuildError(f"{where} --chmod={value}: only octal modes (e.g. 0755) are supported")
    return mode
