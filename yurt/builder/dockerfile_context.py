"""The build context of a Dockerfile: ``.dockerignore`` patterns and the paths COPY/ADD sources name.

Docker's rules for what a build sees of its context directory: ``.dockerignore`` (Go's filepath.Match patterns plus
``**``, cleaned paths, ``!`` exceptions, the last match deciding) and the wildcard expansion of COPY/ADD sources, every
path kept inside the context. It reads the file system, which the parser never does; the build
(:mod:`yurt.builder.dockerbuild`) uses it to choose, digest and stage the files it copies.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator

from yurt.builder.dockerfile_args import _clean
from yurt.builder.dockerfile_lexer import _BadPattern, _char_class
from yurt.errors import BuildError

__all__ = ["Matcher", "copy_sources", "load_dockerignore", "parse_dockerignore"]

_URL = re.compile(r"(?i)(?:https?|git)://|git@")


def _go_glob(pattern: str, *, doublestar: bool) -> str:
    """Go's filepath.Match pattern as a regex (``*`` and ``?`` never match ``/``); with ``doublestar`` Docker's ``**``
    too: ``**/`` is any number of directories (none included), a final ``**`` anything."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if doublestar and i + 1 < n and pattern[i + 1] == "*":
                i += 2
                if i < n and pattern[i] == "/":
                    i += 1
                out.append(".*" if i >= n else "(?:.*/)?")
                continue
            i += 1
            while not doublestar and i < n and pattern[i] == "*":
                i += 1
            out.append("[^/]*")
            continue
        if c == "?":
            out.append("[^/]")
        elif c == "[":
            rx, i = _char_class(pattern, i + 1, shell=False)
            out.append(rx)
            continue
        elif c == "\\":
            i += 1
            if i >= n:
                raise _BadPattern("trailing backslash")
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _has_magic(path: str) -> bool:
    i = 0
    while i < len(path):
        if path[i] == "\\":
            i += 2
            continue
        if path[i] in "*?[":
            return True
        i += 1
    return False


def _normalize_pattern(pattern: str) -> str:
    """Trimmed, cleaned like Go's filepath.Clean, without a leading ``/`` (the context is the root)."""
    pattern = pattern.strip()
    invert = pattern.startswith("!")
    if invert:
        pattern = pattern[1:].strip()
    if pattern:
        pattern = _clean(pattern)
        if len(pattern) > 1 and pattern.startswith("/"):
            pattern = pattern[1:]
    return "!" + pattern if invert else pattern


class Matcher:
    """The patterns of a .dockerignore file, applied as Docker applies them.

    A pattern matches a path when it matches the path itself or one of its parent directories; the last pattern that
    matches decides, so a later ``!pattern`` brings back what an earlier one excluded.
    """

    __slots__ = ("patterns", "has_exceptions", "_rules")

    def __init__(self, patterns: Iterable[str] = (), *, source: str = ".dockerignore",
                 lines: list[int] | None = None) -> None:  # fmt: skip
        self.patterns = [_normalize_pattern(p) for p in patterns]
        self._rules: list[tuple[re.Pattern[str], bool]] = []
        for k, pattern in enumerate(self.patterns):
            where = f"{source}:{lines[k]}:" if lines else f"{source}:"
            exclusion = pattern.startswith("!")
            body = pattern[1:] if exclusion else pattern
            if exclusion and not body:
                raise BuildError(f'{where} illegal exclusion pattern: "!"')
            try:
                rx = re.compile(_go_glob(body, doublestar=True) + r"\Z", re.S)
            except _BadPattern as e:
                raise BuildError(f"{where} bad pattern {pattern!r}: {e}") from None
            self._rules.append((rx, exclusion))
        self.has_exceptions = any(exclusion for _, exclusion in self._rules)

    def ignored(self, relpath: str) -> bool:
        """Whether ``relpath`` (relative to the context, ``/``-separated) is excluded from the context."""
        path = _clean(relpath).lstrip("/")
        if path in ("", "."):
            return False
        parts = path.split("/")
        candidates = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
        ignored = False
        for rx, exclusion in self._rules:
            if exclusion != ignored:
                continue  # an exception only matters for an excluded path, an exclusion for an included one
            if any(rx.match(candidate) for candidate in candidates):
                ignored = not exclusion
        return ignored

    def _excluded(self, root: str, relpath: str) -> bool:
        """Ignored, and not a directory that an exception may reach into."""
        if not self.ignored(relpath):
            return False
        return not (self.has_exceptions and os.path.isdir(os.path.join(root, relpath)))

    def walk(self, context_dir: str, top: str = ".") -> Iterator[str]:
        """The paths under ``top`` (relative to the context, sorted, ``top`` excluded) that are not ignored.

        An ignored directory is not descended into, unless some ``!`` pattern might bring back something inside.
        """
        top = _clean(top).lstrip("/") or "."
        start = context_dir if top == "." else os.path.join(context_dir, top)
        stack = [iter(_entries(start, top))]
        prefixes = ["" if top == "." else top]
        while stack:
            entry = next(stack[-1], None)
            if entry is None:
                stack.pop()
                prefixes.pop()
                continue
            path = f"{prefixes[-1]}/{entry.name}" if prefixes[-1] else entry.name
            ignored = self.ignored(path)
            if not ignored:
                yield path
            if entry.is_dir(follow_symlinks=False) and (not ignored or self.has_exceptions):
                stack.append(iter(_entries(entry.path, path)))
                prefixes.append(path)


def _entries(directory: str, rel: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as it:
            return sorted(it, key=lambda entry: entry.name)
    except OSError as e:
        raise BuildError(f"cannot read {rel or '.'} in the build context: {e.strerror}") from None


def parse_dockerignore(text: str, *, filename: str = ".dockerignore") -> Matcher:
    """A Matcher for the text of a .dockerignore file.

    ``#`` in the first column starts a comment; lines are trimmed; blank lines are skipped; each pattern is cleaned
    like Go's filepath.Clean and loses a leading ``/`` (the context is the root); ``!`` makes an exception."""
    patterns: list[str] = []
    lines: list[int] = []
    for number, line in enumerate(text.split("\n"), 1):
        if number == 1:
            line = line.removeprefix("\ufeff")
        line = line.removesuffix("\r")
        if line.startswith("#"):
            continue
        line = line.strip()
        if line:
            patterns.append(line)
            lines.append(number)
    return Matcher(patterns, source=filename, lines=lines)


def load_dockerignore(context_dir: str, dockerfile: str | None = None) -> Matcher:
    """The Matcher of a build context: ``DOCKERFILE.dockerignore`` next to the Dockerfile if there is one (as
    BuildKit does), else ``CONTEXT/.dockerignore``, else one that ignores nothing."""
    candidates = [dockerfile + ".dockerignore"] if dockerfile else []
    candidates.append(os.path.join(context_dir, ".dockerignore"))
    for path in candidates:
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
        except FileNotFoundError:
            continue
        except OSError as e:
            raise BuildError(f"cannot read {path}: {e.strerror}") from None
        return parse_dockerignore(text, filename=path)
    return Matcher()


def _glob(root: str, rel: str) -> list[str]:
    """The paths under ``root`` matching ``rel`` component by component (Go's filepath.Match), sorted."""
    found = [""]
    components = rel.split("/")
    for k, component in enumerate(components):
        last = k == len(components) - 1
        rx = re.compile(_go_glob(component, doublestar=False) + r"\Z", re.S) if _has_magic(component) else None
        step: list[str] = []
        for base in found:
            directory = os.path.join(root, base) if base else root
            if rx is None:
                names = [component] if os.path.lexists(os.path.join(directory, component)) else []
            else:
                try:
                    names = [name for name in sorted(os.listdir(directory)) if rx.match(name)]
                except OSError:
                    continue
            for name in names:
                path = f"{base}/{name}" if base else name
                if last or os.path.isdir(os.path.join(root, path)):
                    step.append(path)
        found = step
    return found


def copy_sources(
    context_dir: str, patterns: Iterable[str], matcher: Matcher | None = None, *, where: str = ""
) -> list[str]:
    """The context paths that COPY/ADD sources name, wildcards expanded as Docker expands them.

    Sources are relative to the context (a leading ``/`` too); ``*``, ``?`` and ``[...]`` follow Go's filepath.Match
    within one path component; paths the matcher ignores are left out. URLs are returned as they are. A pattern
    matching nothing, a missing or ignored path, a path outside the context (``../x``, or a symlink leading out) is a
    BuildError, prefixed with ``where`` (e.g. ``"Dockerfile:12:"``). Directories are returned as themselves: copying
    their content (minus ignored paths, see ``Matcher.walk``) is the caller's job.
    """
    prefix = f"{where} " if where else ""
    matcher = matcher or Matcher()
    root = os.path.realpath(context_dir)
    out: list[str] = []
    for pattern in patterns:
        if _URL.match(pattern):
            out.append(pattern)
            continue
        rel = _clean(pattern)
        if rel.startswith("/"):
            rel = _clean(rel.lstrip("/"))
        if rel == ".." or rel.startswith("../"):
            raise BuildError(f"{prefix}{pattern}: forbidden path outside the build context")
        if _has_magic(rel):
            try:
                found = [path for path in _glob(root, rel) if not matcher._excluded(root, path)]
            except _BadPattern as e:
                raise BuildError(f"{prefix}{pattern}: bad pattern: {e}") from None
            if not found:
                raise BuildError(f"{prefix}no source files were specified: nothing in the build context matches "
                                 f"{pattern!r}")  # fmt: skip
        else:
            rel = re.sub(r"\\(.)", r"\1", rel)  # escapes, as in a pattern
            if rel != "." and (not os.path.lexists(os.path.join(root, rel)) or matcher._excluded(root, rel)):
                raise BuildError(f"{prefix}{pattern}: file not found in build context or excluded by .dockerignore")
            found = [rel]
        for path in found:
            real = os.path.realpath(os.path.join(root, path))
            if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
                raise BuildError(f"{prefix}{pattern}: {path} leads outside the build context")
        out.extend(found)
    return out
