"""``{{ VAR }}`` templating of definition files, as ``apptainer build --build-arg`` does it.

:func:`render` replaces every ``{{ NAME }}`` (pattern ``{{\\s*(\\w+)\\s*}}``)
in the raw definition text, before it is parsed.  A value comes, first match
wins, from ``--build-arg NAME=VALUE``, from ``--build-arg-file`` (``KEY=VALUE``
lines), or from the ``%arguments`` section of the stage the reference is in
(defaults apply to their own stage only, as in Apptainer).  A default may
itself contain ``{{ OTHER }}``: it is resolved recursively, and a cycle is an
error.  Values given on the command line are used as they are.

Matches on comment lines (first non-blank character ``#``, but not ``#!``) are
left alone.  An undefined variable is a BuildError naming the variable and its
line; so is a build argument that nothing uses, unless ``warn_unused`` turns
that into a warning.  Every message starts with ``FILE:LINE:``.
"""

from __future__ import annotations

from yurt.builder.deffile_lexer import TEMPLATE_RE, lex, parse_arguments, section_name, stage_chunks
from yurt.errors import BuildError, UsageError

MAX_DEPTH = 64  # nested %arguments defaults
MAX_VALUE = 1 << 20  # characters in one expanded default
MAX_OUTPUT = 64 << 20  # characters in the rendered file


def _err(filename: str, line: int, message: str) -> BuildError:
    return BuildError(f"{filename}:{line}: {message}")


def _is_comment_line(text: str, pos: int) -> bool:
    """Whether the line holding ``text[pos]`` is a ``#`` comment (``#!`` lines are not), judged up to ``pos``."""
    start = text.rfind("\n", 0, pos) + 1
    prefix = text[start:pos].lstrip()
    return prefix.startswith("#") and not prefix.startswith("#!")


def _stage_defaults(
    chunk: str, first_line: int, filename: str, warnings: list[str]
) -> tuple[dict[str, str], dict[str, int], dict[int, str]]:
    """The ``%arguments`` defaults of one stage's raw text (several sections merge; the last value wins).

    Also returns their line numbers, and the key defined on each ``KEY=VALUE``
    line (an overridden one too).
    """
    lines: list[tuple[int, str]] = []
    for section in lex(chunk, first_line)[1]:
        if section_name(section.header)[0] == "arguments":
            lines.extend(section.body)
    values, where, problems = parse_arguments(lines, filename)
    warnings.extend(problems)
    line_keys: dict[int, str] = {}
    for number, line in lines:
        key, sep, _ = line.strip().partition("=")
        if sep and key.strip() and not key.startswith("#"):
            line_keys[number] = key.strip()
    return values, where, line_keys


class _Resolver:
    """Looks names up for one stage and expands nested defaults, remembering what was used."""

    def __init__(
        self,
        given: dict[str, str],
        defaults: dict[str, str],
        where: dict[str, int],
        filename: str,
        used: set[str],
        elsewhere: dict[str, int],
    ) -> None:
        self.given = given
        self.defaults = defaults
        self.where = where
        self.filename = filename
        self.used = used
        self.elsewhere = elsewhere  # name -> line of an %arguments default in another stage
        self.cache: dict[str, str] = {}

    def resolve(self, name: str, line: int, chain: tuple[str, ...] = ()) -> str:
        self.used.add(name)
        if name in self.given:
            return self.given[name]
        if name in chain:
            cycle = " -> ".join([*chain[chain.index(name) :], name])
            raise _err(self.filename, line, f"%arguments: the defaults refer to each other in a cycle: {cycle}")
        if name in self.cache:
            return self.cache[name]
        if name not in self.defaults:
            where = f" in the default of {chain[-1]}" if chain else ""
            hint = ""
            if name in self.elsewhere:
                hint = (
                    f"; the %arguments on line {self.elsewhere[name]} belong to another stage, and defaults "
                    "apply only to their own stage"
                )
            raise _err(
                self.filename,
                line,
                f"build argument {{{{ {name} }}}}{where} is not defined: pass "
                f"--build-arg {name}=VALUE, put it in the --build-arg-file, or give it "
                f"a default in this stage's %arguments{hint}",
            )
        if len(chain) >= MAX_DEPTH:
            raise _err(self.filename, line, f"%arguments: defaults nested more than {MAX_DEPTH} deep")
        own_line = self.where[name]
        value = TEMPLATE_RE.sub(lambda m: self.resolve(m.group(1), own_line, (*chain, name)), self.defaults[name])
        if len(value) > MAX_VALUE:
            raise _err(self.filename, own_line, f"%arguments: the value of {name} grows beyond {MAX_VALUE} characters")
        self.cache[name] = value
        return value


def render(
    text: str,
    build_args: dict[str, str],
    arg_file_values: dict[str, str],
    *,
    warn_unused: bool = False,
    filename: str = "Singularity",
) -> tuple[str, list[str]]:
    """The definition ``text`` with every ``{{ NAME }}`` replaced, and the warnings.

    ``build_args`` (``--build-arg``) win over ``arg_file_values``
    (``--build-arg-file``, see :func:`parse_arg_file`), which win over the
    stage's ``%arguments``.  BuildError (``FILE:LINE: ...``) for an undefined
    name, a cycle, or an unused build argument unless ``warn_unused``.
    """
    given = {**arg_file_values, **build_args}
    warnings: list[str] = []
    used: set[str] = set()
    chunks = stage_chunks(text)
    stage_defaults = [_stage_defaults(chunk, line, filename, warnings) for line, chunk in chunks]
    out: list[str] = []
    size = 0
    for i, ((first_line, chunk), (defaults, where, line_keys)) in enumerate(zip(chunks, stage_defaults, strict=True)):
        elsewhere = {k: v for j, (_, w, _) in enumerate(stage_defaults) if j != i for k, v in w.items()}
        resolver = _Resolver(given, defaults, where, filename, used, elsewhere)
        pos, line, counted = 0, first_line, 0
        for m in TEMPLATE_RE.finditer(chunk):
            if _is_comment_line(chunk, m.start()):
                continue
            line += chunk.count("\n", counted, m.start())
            counted = m.start()
            # on an %arguments line, a reference is part of that key's default (for cycles and messages)
            chain = (line_keys[line],) if line in line_keys else ()
            value = resolver.resolve(m.group(1), line, chain)
            size += m.start() - pos + len(value)
            if size > MAX_OUTPUT:
                raise _err(filename, line, f"the rendered definition file grows beyond {MAX_OUTPUT} characters")
            out.append(chunk[pos : m.start()])
            out.append(value)
            pos = m.end()
        out.append(chunk[pos:])
    unused = [k for k in given if k not in used]
    if unused:
        names = ", ".join(unused)
        if not warn_unused:
            raise _err(
                filename,
                1,
                f"unused build argument(s): {names}: no {{{{ NAME }}}} in the definition "
                "file uses them (--warn-unused-build-args makes this a warning)",
            )
        warnings.extend(f"{filename}:1: unused build argument {k}" for k in unused)
    return "".join(out), warnings


def parse_arg_file(text: str, *, filename: str) -> tuple[dict[str, str], list[str]]:
    """A ``--build-arg-file``: ``KEY=VALUE`` lines; blank and ``#`` lines skipped, others skipped with a warning."""
    values: dict[str, str] = {}
    warnings: list[str] = []
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            warnings.append(f"{filename}:{number}: skipping {line[:60]!r}: not KEY=VALUE")
            continue
        values[key.strip()] = value.strip()
    return values, warnings


def parse_build_args(args: list[str]) -> dict[str, str]:
    """``--build-arg KEY=VALUE`` options -> dict (the last of a repeated key wins); UsageError when not KEY=VALUE."""
    values: dict[str, str] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--build-arg {arg!r}: expected KEY=VALUE")
        values[key.strip()] = value.strip()
    return values
