"""What a layer member's name means: a safe path inside the image, or a whiteout.

Layers come from the network, so every member name is hostile until :func:`clean_name` has
made it a path relative to the image root: leading ``/`` and ``./``, ``//`` and ``.``
components go; a ``..`` that would climb above the root, a NUL byte, a name over 4096 bytes
or a component over 255 bytes is refused.  :func:`_classify` then tells an ordinary entry
from the whiteouts of image-spec ``layer.md``: ``.wh.NAME`` deletes NAME, ``.wh..wh..opq``
makes its directory opaque, other ``.wh..wh.*`` names are aufs bookkeeping and are dropped,
as Docker does.  Both are pure functions of the name, kept apart from the merge
(:mod:`yurt.image.layers`) so that the path-safety rules can be read (and changed) in one place.
"""

from __future__ import annotations

from yurt.errors import ImageError

MAX_NAME_BYTES = 4096  # PATH_MAX
MAX_COMPONENT_BYTES = 255  # NAME_MAX; squashfs allows 256
WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
_AUFS_META_PREFIX = ".wh..wh."


def clean_name(name: str, label: str, what: str = "member") -> str:
    """A member name as a path relative to the image root ("" is the root itself).

    Leading ``/`` and ``./``, empty and ``.`` components are dropped; ``..`` is resolved
    lexically and refused when it would leave the root.
    """
    if "\x00" in name:
        raise ImageError(f"layer {label}: {what} name {name!r} contains a NUL byte")
    if len(name) > MAX_NAME_BYTES // 4 and len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise ImageError(f"layer {label}: {what} name {name[:80]!r}... is longer than {MAX_NAME_BYTES} bytes")
    if "//" not in name and "/." not in name and not name.startswith((".", "/")) and not name.endswith("/") \
            and name and len(name) <= MAX_COMPONENT_BYTES // 4:
        return name  # already clean (the common case)
    parts: list[str] = []
    for part in name.split("/"):
        if not part or part == ".":
            continue
        if part == "..":
            if not parts:
                raise ImageError(f"layer {label}: {what} {name!r} points outside the image (..)")
            parts.pop()
            continue
        if len(part) > MAX_COMPONENT_BYTES // 4 and len(part.encode("utf-8", "surrogateescape")) > MAX_COMPONENT_BYTES:
            raise ImageError(f"layer {label}: {what} {name[:80]!r} has a component over {MAX_COMPONENT_BYTES} bytes")
        parts.append(part)
    return "/".join(parts)


_ENTRY, _WHITEOUT, _OPAQUE, _SKIP = range(4)


def _classify(path: str, label: str) -> tuple[int, str]:
    """(kind, path): an ordinary entry, a whiteout (of the returned path), an opaque marker (of
    the returned directory), or something to drop (aufs metadata, entries under a whiteout)."""
    if ".wh." not in path:
        return _ENTRY, path
    slash = path.rfind("/")
    parent, base = (path[:slash], path[slash + 1:]) if slash >= 0 else ("", path)
    if parent.startswith(WHITEOUT_PREFIX) or "/" + WHITEOUT_PREFIX in parent:
        return _SKIP, path
    if not base.startswith(WHITEOUT_PREFIX):
        return _ENTRY, path
    if base == OPAQUE_WHITEOUT:
        return _OPAQUE, parent
    if base.startswith(_AUFS_META_PREFIX):
        return _SKIP, path
    target = base[len(WHITEOUT_PREFIX):]
    if target in ("", ".", ".."):
        raise ImageError(f"layer {label}: invalid whiteout {path!r}")
    return _WHITEOUT, f"{parent}/{target}" if parent else target


def _parent(path: str) -> str:
    slash = path.rfind("/")
    return path[:slash] if slash >= 0 else ""
