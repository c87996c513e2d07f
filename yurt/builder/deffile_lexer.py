"""Definition files as text: lines, stages, sections, and the small syntaxes of section bodies.

The level below the parser (:mod:`yurt.builder.deffile`): cutting a file into stages at ``Bootstrap:`` lines and a
stage into header lines and raw ``%`` sections, without judging any of it, and reading the bodies whose lines have a
syntax of their own (``%files`` paths with quotes, ``%labels``, ``%arguments``). It is separate because templating
(:mod:`yurt.builder.templating`) must cut a file up exactly as the parser does before the file can be parsed, and the
records (:mod:`yurt.builder.deffile_model`) read the bodies again.
"""

from __future__ import annotations

import re

from yurt.errors import BuildError

# Apptainer's All() splits on `(?mi)^bootstrap:`.  ASCII only, so that what
# starts a stage is exactly what the header parser reads as the key "bootstrap".
STAGE_SPLIT_RE = re.compile(r"^bootstrap:", re.IGNORECASE | re.MULTILINE | re.ASCII)
TEMPLATE_RE = re.compile(r"{{\s*(\w+)\s*}}", re.ASCII)


def _err(filename: str, line: int, message: str) -> BuildError:
    return BuildError(f"{filename}:{line}: {message}")


def _show(text: str, limit: int = 60) -> str:
    """``text`` for a message: quoted, and cut to ``limit`` characters."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _is_section_line(line: str) -> bool:
    return line.lstrip()[:1] == "%"


def _is_comment_or_blank(line: str) -> bool:
    s = line.strip()
    return not s or s.startswith("#")


# -- lexing (shared with templating; never raises) --------------------------


def split_lines(text: str, first_line: int = 1) -> list[tuple[int, str]]:
    """``(line number, line)`` for each line of ``text``: split on ``\\n`` only, trailing ``\\r`` dropped."""
    parts = text.split("\n")
    if parts[-1] == "":
        parts.pop()
    return [(first_line + i, p.rstrip("\r")) for i, p in enumerate(parts)]


def stage_chunks(text: str) -> list[tuple[int, str]]:
    """``text`` cut before every ``Bootstrap:`` line, as ``(first line number, text)`` pieces.

    The first piece is what comes before the first ``Bootstrap:`` (often
    ``""``); the pieces joined give ``text`` back.
    """
    bounds = [0, *(m.start() for m in STAGE_SPLIT_RE.finditer(text)), len(text)]
    chunks: list[tuple[int, str]] = []
    line = 1
    for a, b in zip(bounds, bounds[1:], strict=False):
        chunk = text[a:b]
        chunks.append((line, chunk))
        line += chunk.count("\n")
    return chunks


class RawSection:
    """A section as lexed: the line number and text of its ``%`` line, and its body lines."""

    __slots__ = ("line", "header", "body")

    def __init__(self, line: int, header: str, body: list[tuple[int, str]]) -> None:
        self.line = line
        self.header = header
        self.body = body


def lex(chunk: str, first_line: int = 1) -> tuple[list[tuple[int, str]], list[RawSection]]:
    """One stage's text -> its header lines and its raw sections; nothing is checked."""
    header: list[tuple[int, str]] = []
    sections: list[RawSection] = []
    for number, line in split_lines(chunk, first_line):
        if _is_section_line(line):
            sections.append(RawSection(number, line, []))
        elif sections:
            sections[-1].body.append((number, line))
        else:
            header.append((number, line))
    return header, sections


def section_name(header_line: str) -> tuple[str, str]:
    """``("post", " -c /bin/bash")`` for ``"%post -c /bin/bash"``: the lower-case name and the rest of the line."""
    s = header_line.lstrip().lstrip("%")
    parts = s.split(None, 1)
    if not parts:
        return "", ""
    start = len(s) - len(s.lstrip())
    return parts[0].lower(), s[start + len(parts[0]) :]


def parse_arguments(lines: list[tuple[int, str]], filename: str) -> tuple[dict[str, str], dict[str, int], list[str]]:
    """The ``KEY=value`` lines of an ``%arguments`` body: values, their line numbers, and warnings.

    Blank lines and ``#`` comments are skipped; so is a line without ``=``,
    with a warning (as Apptainer does).  Keys and values are stripped.
    """
    values: dict[str, str] = {}
    where: dict[str, int] = {}
    warnings: list[str] = []
    for number, line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        key, sep, value = text.partition("=")
        key = key.strip()
        if not sep or not key:
            warnings.append(f"{filename}:{number}: %arguments: skipping {_show(text)}: not KEY=VALUE")
            continue
        values[key] = value.strip()
        where[key] = number
    return values, where, warnings


# -- section bodies -----------------------------------------------------------


def _split_paths(text: str, filename: str, number: int) -> list[str]:
    """Words split at whitespace, with ``"..."`` and ``'...'`` quoting; an unquoted word starting with ``#`` ends it."""
    words: list[str] = []
    current: str | None = None
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            if current is not None:
                words.append(current)
                current = None
            i += 1
        elif c == "#" and current is None:
            break
        elif c in "\"'":
            j = text.find(c, i + 1)
            if j < 0:
                raise _err(filename, number, f"unterminated {c} quote in {_show(text)}")
            current = (current or "") + text[i + 1 : j]
            i = j + 1
        else:
            m = TEMPLATE_RE.match(text, i) if c == "{" else None  # an unrendered {{ VAR }} stays one word
            end = m.end() if m else i + 1
            current = (current or "") + text[i:end]
            i = end
    if current is not None:
        words.append(current)
    return words


def parse_file_lines(lines: list[tuple[int, str]], filename: str) -> list[tuple[str, str]]:
    """The ``SRC [DST]`` lines of a ``%files``/``%appfiles`` body as ``(src, dst)``; ``dst`` defaults to ``src``."""
    pairs: list[tuple[str, str]] = []
    for number, line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        words = _split_paths(text, filename, number)
        if not words:
            continue
        if len(words) > 2:
            raise _err(
                filename,
                number,
                f"%files line {_show(text)} has {len(words)} paths, expected 'SRC [DST]' "
                "(quote a path that contains spaces)",
            )
        src = words[0]
        dst = words[1] if len(words) == 2 else src
        if not src or not dst:
            raise _err(filename, number, f"%files line {_show(text)} has an empty path")
        pairs.append((src, dst))
    return pairs


def parse_labels(body: str) -> dict[str, str]:
    """A ``%labels`` body -> ``{key: value}``: ``KEY VALUE`` lines; blank and ``#`` lines skipped; the last wins."""
    labels: dict[str, str] = {}
    for _, line in split_lines(body):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.split(None, 1)
        labels[parts[0]] = parts[1].strip() if len(parts) > 1 else ""
    return labels
