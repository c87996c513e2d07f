"""What a definition file is made of: its header keys, sections and agents, and the records of one stage.

:class:`Definition` (one stage) and :class:`Section` are what :func:`yurt.builder.deffile.parse` returns and what the
build (:mod:`yurt.builder.executor`), the conversion to a Dockerfile (:mod:`yurt.builder.convert`) and the Dockerfile
build read; they also write themselves back as canonical text (:meth:`Definition.to_text`, :func:`to_text`), which
``parse`` reads back to an equal record. Separate from the parser so that readers of a definition need not know how
one is parsed, and the parser's checks and messages stay in one place.
"""

from __future__ import annotations

import re
import shlex

from yurt.builder.deffile_lexer import _err, parse_arguments, parse_file_lines, parse_labels, split_lines
from yurt.record import Record

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
