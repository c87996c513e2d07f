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

The text level (stages, sections, body syntax, shared with templating) is
:mod:`yurt.builder.deffile_lexer`; the records and the vocabulary (header keys,
sections, agents) are :mod:`yurt.builder.deffile_model`.

:meth:`Definition.validate` adds what yurt cannot do yet (bootstrap agents such
as ``library`` or ``yum``), so that ``parse`` alone still reads whatever
Apptainer reads, e.g. a definition recorded in an image.

:meth:`Definition.to_text` (and :func:`~yurt.builder.deffile_model.to_text` for
several stages) writes a canonical definition that ``parse`` reads back to an
equal :class:`Definition`; equality ignores line numbers, the raw text, the file
name and the warnings.

``{{ VAR }}`` templating happens before parsing: see :mod:`yurt.builder.templating`.
"""

from __future__ import annotations

import shlex

from yurt.builder.deffile_lexer import (
    RawSection,
    _err,
    _is_comment_or_blank,
    _show,
    lex,
    parse_file_lines,
    section_name,
    split_lines,
    stage_chunks,
)
from yurt.builder.deffile_model import (
    _APP_NAME_RE,
    _NO_ARGS_SECTIONS,
    _OTHERURL_RE,
    APP_SECTIONS,
    HEADER_KEYS,
    KNOWN_AGENTS,
    REQUIRED_HEADERS,
    SECTIONS,
    SUPPORTED_AGENTS,
    VALID_HEADER_LIST,
    Definition,
    Section,
    _display_key,
)

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
