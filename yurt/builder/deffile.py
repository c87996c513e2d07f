"""Apptainer/Singularity definition files: headers, sections, stages and SCIF apps.

:func:`parse` reads a whole definition file into one :class:`Definition` per
stage, cutting it up the way Apptainer's parser
(``pkg/build/types/parser/deffile.go``) does:

* The file is split before every line that starts with ``Bootstrap:`` (any
  case); each piece is a stage, named by its ``Stage:`` header.  Only blank and
  comment lines may come before the first ``Bootstrap:``.
* A line whose first word starts with ``%`` opens a section (``%post``,
  ``%files from builder``, ``%appinstall NAME``); everything before the first
  section is the header.  Header lines are ``Key: value`` with case-insensitive
  keys and ``#`` comments; a trailing ``\\`` continues the value on the next
  line, and ``\\n\\`` continues it after a newline.
* Sections of one kind may repeat; they are kept in file order and the
  accessors (:attr:`Definition.post`, :attr:`Definition.files`, ...) merge
  them as Apptainer does.

Lines end with ``\\n``, ``\\r\\n`` or a last line without either; trailing
``\\r`` characters are dropped.  Every problem is a
:class:`~yurt.errors.BuildError` whose message starts with ``FILE:LINE:``, and
nothing else is raised for any text.  What is accepted but not acted upon
(``Fingerprints:``, the legacy ``%pre``, repeated header keys) is listed in
:attr:`Definition.warnings`, with its line.

:meth:`Definition.validate` adds what yurt cannot do yet (bootstrap agents such
as ``library`` or ``yum``), so that ``parse`` alone still reads whatever
Apptainer reads, e.g. a definition recorded in an image.

:meth:`Definition.to_text` (and :func:`to_text` for several stages) writes a
canonical definition that ``parse`` reads back to an equal :class:`Definition`;
equality ignores line numbers, the raw text, the file name and the warnings.

``{{ VAR }}`` templating happens before parsing: see :mod:`yurt.builder.templating`.
"""

from __future__ import annotations

import re
import shlex

from yurt.errors import BuildError
from yurt.record import Record

# Apptainer's All() splits on `(?mi)^bootstrap:`.  ASCII only, so that what
# starts a stage is exactly what the header parser reads as the key "bootstrap".
STAGE_SPLIT_RE = re.compile(r"^bootstrap:", re.IGNORECASE | re.MULTILINE | re.ASCII)
TEMPLATE_RE = re.compile(r"{{\s*(\w+)\s*}}", re.ASCII)

# validHeaders (deffile.go) and the v1.5 BuildKit keys -> the spelling used by to_text() and in messages.
HEADER_KEYS: dict[str, str] = {
    "bootstrap": "Bootstrap",
    "from": "From",
    "includecmd": "IncludeCmd",
    "mirrorurl": "MirrorURL",
    "updateurl": "UpdateURL",
    "osversion": "OSVersion",
    "include": "Include",
    "library": "Library",
    "registry": "Registry",
    "namespace": "Namespace",
    "stage": "Stage",
    "product": "Product",
    "user": "User",
    "regcode": "Regcode",
    "productpgp": "ProductPGP",
    "registerurl": "RegisterURL",
    "modules": "Modules",
    "fingerprints": "Fingerprints",
    "confurl": "ConfURL",
    "setopt": "SetOpt",
    "target": "Target",
    "frontend": "Frontend",
    "filename": "Filename",
    "buildargs": "BuildArgs",
}
_OTHERURL_RE = re.compile(r"otherurl([0-9]+)", re.ASCII)  # zypper's OtherURL<N>
VALID_HEADER_LIST = ", ".join([*HEADER_KEYS.values(), "OtherURL<N>"])

SECTIONS = (
    "arguments",
    "pre",
    "setup",
    "files",
    "post",
    "environment",
    "runscript",
    "startscript",
    "test",
    "labels",
    "help",
)
APP_SECTIONS = ("appinstall", "applabels", "appfiles", "appenv", "apptest", "apphelp", "apprun", "appstart")
_NO_ARGS_SECTIONS = frozenset({"arguments", "environment", "labels", "help", "applabels", "appenv", "apphelp"})
# An app name becomes a path (/scif/apps/NAME): no "/", no leading "." or "-".
_APP_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*", re.ASCII)

# Agents yurt builds from, and those it only parses (validate() refuses them).
SUPPORTED_AGENTS = (
    "docker",
    "docker-archive",
    "oci",
    "oci-archive",
    "oras",
    "localimage",
    "debootstrap",
    "busybox",
    "scratch",
)
UNSUPPORTED_AGENTS = ("docker-daemon", "library", "shub", "yum", "dnf", "zypper", "arch", "buildkit", "dockerfile")
KNOWN_AGENTS = SUPPORTED_AGENTS + UNSUPPORTED_AGENTS
REQUIRED_HEADERS: dict[str, tuple[str, ...]] = {
    "docker": ("from",),
    "docker-archive": ("from",),
    "docker-daemon": ("from",),
    "oci": ("from",),
    "oci-archive": ("from",),
    "oras": ("from",),
    "localimage": ("from",),
    "library": ("from",),
    "shub": ("from",),
    "debootstrap": ("osversion", "mirrorurl"),
}
_EXAMPLES = {"from": "From: ubuntu:22.04"}
FINGERPRINTS_WARNING = "ignored: signature verification of the bootstrap image is not implemented"


def _example(key: str) -> str:
    """A header line to suggest; debootstrap's from the host's apt sources (no mirror is built into
    yurt: sites use their own).  Apptainer, too, requires MirrorURL rather than guessing one."""
    if key not in ("osversion", "mirrorurl"):
        return _EXAMPLES[key]
    from yurt.builder.aptsources import host_mirror

    mirror = host_mirror()
    if key == "osversion":
        return f"OSVersion: {mirror.suite}" if mirror else "OSVersion: bookworm"
    if mirror is None:
        return "MirrorURL: http://<your Debian mirror>/debian"
    return f"MirrorURL: {mirror.uri}, this host's apt source"


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


# -- records --------------------------------------------------------------------


class Section(Record):
    """One ``%name [args]`` block.  ``app`` is the SCIF app of an ``%app*`` section; ``line`` is its ``%`` line.

    ``body`` is the text from the next line up to the next section, each line
    ending in ``\\n``.  Equality ignores ``line``.
    """

    __slots__ = ("name", "args", "body", "app", "line")
    _defaults = {"args": list, "body": "", "app": None, "line": 0}
    name: str
    args: list[str]
    body: str
    app: str | None
    line: int

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return (self.name, self.args, self.body, self.app) == (other.name, other.args, other.body, other.app)

    __hash__ = None  # type: ignore[assignment]

    def header_line(self) -> str:
        """The canonical ``%name [app] [args]`` line."""
        words = [f"%{self.name}"]
        if self.app is not None:
            words.append(self.app)
        words.extend(shlex.quote(a) for a in self.args)
        return " ".join(words)

    def body_lines(self) -> list[tuple[int, str]]:
        """``(line number, line)`` for each line of the body."""
        return split_lines(self.body, self.line + 1)


class Definition(Record):
    """One stage of a definition file.

    ``header`` maps lower-case keys to the values as written; ``bootstrap`` is
    the agent in lower case, ``source`` the ``From:`` value and ``stage`` the
    ``Stage:`` name (``None`` when absent).  ``sections`` holds every section in
    file order.  ``raw`` is the stage's text as written (the first stage also
    gets the comment lines before its ``Bootstrap:``), ``line`` the line of its
    ``Bootstrap:``.  Equality compares the header and the sections only.
    """

    __slots__ = ("header", "bootstrap", "source", "stage", "sections", "raw", "filename", "line", "warnings")
    _defaults = {
        "source": None,
        "stage": None,
        "sections": list,
        "raw": "",
        "filename": "Singularity",
        "line": 1,
        "warnings": list,
    }
    header: dict[str, str]
    bootstrap: str
    source: str | None
    stage: str | None
    sections: list[Section]
    raw: str
    filename: str
    line: int
    warnings: list[str]

    _COMPARED = ("header", "bootstrap", "source", "stage", "sections")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self._COMPARED)

    __hash__ = None  # type: ignore[assignment]

    # -- sections --

    def sections_named(self, name: str, app: str | None = None) -> list[Section]:
        return [s for s in self.sections if s.name == name and s.app == app]

    def body(self, name: str, app: str | None = None) -> str:
        """The bodies of every ``%name`` section (of ``app``), joined in file order; ``""`` when there is none."""
        return "".join(s.body for s in self.sections_named(name, app))

    def section_args(self, name: str, app: str | None = None) -> list[str]:
        """The arguments of the last ``%name`` section, e.g. ``["-c", "/bin/bash"]`` (Apptainer keeps the last)."""
        found = self.sections_named(name, app)
        return list(found[-1].args) if found else []

    @property
    def pre(self) -> str:
        return self.body("pre")

    @property
    def setup(self) -> str:
        return self.body("setup")

    @property
    def post(self) -> str:
        return self.body("post")

    @property
    def environment(self) -> str:
        return self.body("environment")

    @property
    def runscript(self) -> str:
        return self.body("runscript")

    @property
    def startscript(self) -> str:
        return self.body("startscript")

    @property
    def test(self) -> str:
        return self.body("test")

    @property
    def help(self) -> str:
        return self.body("help")

    @property
    def labels(self) -> dict[str, str]:
        return parse_labels(self.body("labels"))

    @property
    def arguments(self) -> dict[str, str]:
        """The ``%arguments`` defaults as written (before templating)."""
        lines = [x for s in self.sections_named("arguments") for x in s.body_lines()]
        return parse_arguments(lines, self.filename)[0]

    @property
    def files(self) -> list[tuple[str, str]]:
        """``(src, dst)`` for every line of the ``%files`` sections without ``from``, in file order."""
        return [
            p
            for s in self.sections_named("files")
            if not s.args
            for p in parse_file_lines(s.body_lines(), self.filename)
        ]

    @property
    def files_from(self) -> dict[str, list[tuple[str, str]]]:
        """``{stage: [(src, dst), ...]}`` from the ``%files from STAGE`` sections."""
        out: dict[str, list[tuple[str, str]]] = {}
        for s in self.sections_named("files"):
            if len(s.args) == 2:
                out.setdefault(s.args[1], []).extend(parse_file_lines(s.body_lines(), self.filename))
        return out

    @property
    def apps(self) -> dict[str, dict[str, str]]:
        """``{app: {"appinstall": body, "apprun": body, ...}}``, apps in the order they first appear."""
        out: dict[str, dict[str, str]] = {}
        for s in self.sections:
            if s.app is not None:
                app = out.setdefault(s.app, {})
                app[s.name] = app.get(s.name, "") + s.body
        return out

    def app_files(self, app: str) -> list[tuple[str, str]]:
        """``(src, dst)`` pairs of the ``%appfiles APP`` sections."""
        return [
            p for s in self.sections_named("appfiles", app) for p in parse_file_lines(s.body_lines(), self.filename)
        ]

    def app_labels(self, app: str) -> dict[str, str]:
        return parse_labels(self.body("applabels", app))

    # -- checks and output --

    def validate(self) -> None:
        """Refuse (BuildError) what parses but yurt cannot build yet."""
        if self.bootstrap not in SUPPORTED_AGENTS:
            raise _err(
                self.filename,
                self.line,
                f"Bootstrap: {self.bootstrap} is not supported by yurt yet (supported: {', '.join(SUPPORTED_AGENTS)})",
            )

    def to_text(self) -> str:
        """This stage as a canonical definition: the header, a blank line, then the sections.

        A stage with ``%files from`` reads back only after the stages it names
        (see :func:`to_text`).
        """
        out: list[str] = []
        for key in ["bootstrap", *(k for k in self.header if k != "bootstrap")]:
            value = self.header.get(key, self.bootstrap if key == "bootstrap" else "")
            out.extend(_header_lines(_display_key(key), value))
        out.append("")
        for s in self.sections:
            out.append(s.header_line())
            if s.body:
                out.append(s.body[:-1] if s.body.endswith("\n") else s.body)
        return "\n".join(out) + "\n"


def _display_key(key: str) -> str:
    m = _OTHERURL_RE.fullmatch(key)
    return f"OtherURL{m.group(1)}" if m else HEADER_KEYS.get(key, key)


def _header_lines(key: str, value: str) -> list[str]:
    """``Key: value`` lines that the header parser reads back as ``value`` (newlines as ``\\n\\`` continuations)."""
    segments = value.split("\n")
    lines: list[str] = []
    for i, seg in enumerate(segments):
        prefix = f"{key}: " if i == 0 else "    "  # indented: a continuation never starts a stage
        if i < len(segments) - 1:
            lines.append(prefix + seg + "\\n\\")
        elif i > 0 and seg == "":
            lines.append("")  # a blank line ends the continuation, keeping the final newline
        elif seg.endswith("\\") or seg != seg.rstrip():
            lines.extend([prefix + seg + "\\", ""])  # a continuation keeps what the end of a line would lose
        else:
            lines.append((prefix + seg).rstrip())
    return lines


def to_text(definitions: list[Definition]) -> str:
    """The canonical text of a whole (multi-stage) definition file."""
    return "".join(d.to_text() for d in definitions)


# -- parsing ----------------------------------------------------------------------


def _parse_header(
    lines: list[tuple[int, str]], filename: str, warnings: list[str]
) -> tuple[dict[str, str], dict[str, int]]:
    header: dict[str, str] = {}
    where: dict[str, int] = {}
    pending: tuple[str, str, int] | None = None  # a continued value: key, value so far, line of the key

    def store(key: str, value: str, number: int) -> None:
        if key not in HEADER_KEYS and not _OTHERURL_RE.fullmatch(key):
            raise _err(filename, number, f"unknown header key {_show(key)} (valid keys: {VALID_HEADER_LIST})")
        if key in header:
            warnings.append(
                f"{filename}:{number}: {_display_key(key)}: given again (first on line {where[key]}); "
                "the last value wins"
            )
        header[key] = value
        where[key] = number

    for number, raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            if pending:
                store(*pending)
                pending = None
            continue
        text = line.split("#", 1)[0]
        if pending is None:
            key, sep, value = text.partition(":")
            if not sep:
                raise _err(
                    filename,
                    number,
                    f"invalid header line {_show(line)}: expected 'Key: value' "
                    "(or is a %section line missing before it?)",
                )
            key, value, key_line = key.strip().lower(), value.strip(), number
        else:
            key, value, key_line = pending[0], pending[1] + text.strip(), pending[2]
            pending = None
        if value.endswith("\\"):
            value = value[:-1]
            if value.endswith("\\n"):
                value = value[:-2] + "\n"
            pending = (key, value, key_line)
            continue
        store(key, value, key_line)
    if pending:
        store(*pending)
    return header, where


def _parse_section(raw: RawSection, filename: str, warnings: list[str]) -> Section:
    name, rest = section_name(raw.header)
    if not name:
        raise _err(filename, raw.line, f"section line {_show(raw.header.strip())} has no name after '%'")
    if name not in SECTIONS and name not in APP_SECTIONS:
        raise _err(
            filename,
            raw.line,
            f"unknown section %{name} (valid sections: "
            f"{', '.join('%' + s for s in SECTIONS)}; SCIF app sections: "
            f"{', '.join('%' + s + ' NAME' for s in APP_SECTIONS)})",
        )
    try:
        args = shlex.split(rest)
    except ValueError as e:
        raise _err(filename, raw.line, f"cannot split the arguments of %{name}: {e}")
    app = None
    if name in APP_SECTIONS:
        if not args:
            raise _err(filename, raw.line, f"%{name} needs an app name: %{name} NAME")
        app, args = args[0], args[1:]
        if not _APP_NAME_RE.fullmatch(app):
            raise _err(
                filename,
                raw.line,
                f"%{name}: invalid app name {_show(app)} (letters, digits and '_.+-', "
                "not starting with '.', '+' or '-')",
            )
    if name == "files" and args and (len(args) != 2 or args[0] != "from" or not args[1]):
        raise _err(filename, raw.line, f"%files takes no arguments or 'from STAGE', not {_show(rest.strip())}")
    if name in _NO_ARGS_SECTIONS and args:
        warnings.append(f"{filename}:{raw.line}: %{name}: arguments {_show(rest.strip())} are ignored")
    if name == "pre":
        warnings.append(
            f"{filename}:{raw.line}: %pre is a legacy section that runs on the host before the bootstrap; prefer %setup"
        )
    if name in ("files", "appfiles"):
        parse_file_lines(raw.body, filename)  # syntax errors now, with their line numbers
    return Section(name, args, "".join(line + "\n" for _, line in raw.body), app, raw.line)


def _parse_stage(number: int, chunk: str, raw: str, filename: str) -> tuple[Definition, dict[str, int]]:
    warnings: list[str] = []
    header_lines, raw_sections = lex(chunk, number)
    header, where = _parse_header(header_lines, filename, warnings)
    line = where.get("bootstrap", number)
    agent = header.get("bootstrap", "").lower()
    if not agent:
        raise _err(filename, line, f"Bootstrap: needs an agent (one of {', '.join(KNOWN_AGENTS)})")
    if agent not in KNOWN_AGENTS:
        raise _err(
            filename, line, f"unknown bootstrap agent {_show(header['bootstrap'])} (known: {', '.join(KNOWN_AGENTS)})"
        )
    for key in REQUIRED_HEADERS.get(agent, ()):
        if not header.get(key):
            raise _err(
                filename,
                where.get(key, line),
                f"Bootstrap: {agent} needs a {HEADER_KEYS[key]}: header (for example {_example(key)})",
            )
    if "fingerprints" in header:
        warnings.append(f"{filename}:{where['fingerprints']}: Fingerprints: {FINGERPRINTS_WARNING}")
    sections = [_parse_section(s, filename, warnings) for s in raw_sections]
    definition = Definition(
        header=header,
        bootstrap=agent,
        source=header.get("from"),
        stage=header.get("stage") or None,
        sections=sections,
        raw=raw,
        filename=filename,
        line=line,
        warnings=warnings,
    )
    return definition, where


def _names_stage(chunk: str, name: str) -> bool:
    """Whether the header of a (not yet parsed) stage says ``Stage: name``."""
    for _, line in lex(chunk)[0]:
        key, sep, value = line.split("#", 1)[0].partition(":")
        if sep and key.strip().lower() == "stage" and value.strip() == name:
            return True
    return False


def _check_files_from(definition: Definition, earlier: list[str], later: list[tuple[int, str]], filename: str) -> None:
    for s in definition.sections_named("files"):
        if not s.args or s.args[1] in earlier:
            continue
        target = s.args[1]
        if target == definition.stage:
            raise _err(
                filename, s.line, f"%files from {target}: a stage cannot copy from itself, only from an earlier stage"
            )
        if any(_names_stage(chunk, target) for _, chunk in later):
            raise _err(
                filename,
                s.line,
                f"%files from {target}: stage {target} comes later in the file; only an earlier stage can be named",
            )
        raise _err(
            filename,
            s.line,
            f"%files from {target}: no earlier stage is named {_show(target)} "
            f"(earlier stages: {', '.join(earlier) or 'none'})",
        )


def parse(text: str | bytes, *, filename: str = "Singularity") -> list[Definition]:
    """Every stage of a definition file, checked; BuildError (``FILE:LINE: ...``) on any problem."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _err(filename, text.count(b"\n", 0, e.start) + 1, "the definition file is not UTF-8 text")
    text = text.removeprefix("\ufeff")
    chunks = stage_chunks(text)
    pre_line, pre = chunks[0]
    stages = chunks[1:]
    if not stages:
        if all(_is_comment_or_blank(line) for _, line in split_lines(pre)):
            raise _err(filename, 1, "missing Bootstrap: header (the definition file is empty)")
        raise _err(
            filename,
            1,
            "missing Bootstrap: header: a definition file starts with 'Bootstrap: AGENT' "
            f"({', '.join(SUPPORTED_AGENTS)})",
        )
    for number, line in split_lines(pre, pre_line):
        if not _is_comment_or_blank(line):
            raise _err(
                filename,
                number,
                f"{_show(line.strip())} comes before the first Bootstrap: line "
                f"(line {stages[0][0]}); each stage starts with 'Bootstrap: AGENT'",
            )
    definitions: list[Definition] = []
    names: list[str] = []
    for i, (number, chunk) in enumerate(stages):
        definition, where = _parse_stage(number, chunk, pre + chunk if i == 0 else chunk, filename)
        if definition.stage is not None and definition.stage in names:
            raise _err(
                filename,
                where["stage"],
                f"stage name {_show(definition.stage)} is already used by an earlier stage; stage names must be unique",
            )
        _check_files_from(definition, names, stages[i + 1 :], filename)
        definitions.append(definition)
        if definition.stage is not None:
            names.append(definition.stage)
    return definitions


def validate(definitions: list[Definition]) -> None:
    """:meth:`Definition.validate` for each stage."""
    for d in definitions:
        d.validate()
