"""Dockerfiles: parse them into stages and instructions (Docker's rules for directives, ARG scope and stages).

The rules followed are those of Docker's Dockerfile reference as BuildKit implements them:

* Parser directives (``# escape=``, ``# syntax=``, ``# check=``) count only at the very top, before any comment, blank
  line or instruction; an unknown one ends the directives and is a comment. The escape character (``\\`` or a
  backtick) continues lines and escapes characters in words.
* Comment lines (``#`` after optional blanks) are dropped, also in the middle of a continued instruction, and so are
  blank continuation lines.
* Exec form is a JSON array of strings; anything else (a malformed array included) is shell form.
* ARG scope: the ARGs before the first FROM are global and usable only in FROM lines (together with the automatic
  ``BUILDPLATFORM``/``TARGETPLATFORM``... ones); a stage sees an ARG once it declares it, and ``ARG NAME`` without a
  default takes the global value. ``build_args`` override every default. ENV wins over an ARG of the same name. A stage
  whose FROM names an earlier stage starts with that stage's ENV and ARGs.
* Substitution (``$V``, ``${V}``, ``${V:-w}``, ``${V-w}``, ``${V:+w}``, ``${V+w}``, ``${V:?m}``, ``${V#p}``,
  ``${V##p}``, ``${V%p}``, ``${V%%p}``, ``${V/p/r}``, ``${V//p/r}``, with quotes and escapes) happens in ADD, COPY,
  ENV, EXPOSE, FROM, LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR and in the flags of FROM, COPY, ADD and RUN, never in
  RUN, CMD, ENTRYPOINT, SHELL, HEALTHCHECK or ONBUILD (their shell does it). All the substitutions of one ARG, ENV or
  LABEL instruction see the variables as they were before it.
* The parser does not know the base image's environment unless ``parse(base_env=...)`` tells it: by default a base
  image is assumed to set ``PATH`` to the default and nothing else, so ``ENV PATH=/opt/bin:$PATH`` works.

Differences from Docker, on purpose: ``COPY --from=NAME`` must name an earlier stage unless NAME looks like an image
reference (has a ``:``, ``/``, ``@`` or ``.``: write ``busybox:latest`` rather than ``busybox``), and heredocs are not
supported.

The parser's pieces live next to it: the word processing (quotes, escapes, substitution) in
:mod:`yurt.builder.dockerfile_lexer`, the instruction arguments (flags, JSON form, ``K=V``, ports, platforms) in
:mod:`yurt.builder.dockerfile_args`. What is done with the stages: the image config they produce
(:mod:`yurt.builder.dockerfile_config`), ``.dockerignore`` and COPY/ADD sources
(:mod:`yurt.builder.dockerfile_context`), the conversion to a definition file (:mod:`yurt.builder.dockerfile_convert`),
the build (:mod:`yurt.builder.dockerbuild`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

from yurt.builder.dockerfile_args import (
    _SPLIT_WS,
    _extract_flags,
    _go_duration,
    _json_list,
    _name_values,
    _platform_args,
    _port_keys,
    _split_words,
)
from yurt.builder.dockerfile_lexer import _Fail, _word, _words
from yurt.errors import BuildError
from yurt.record import Record

__all__ = [
    "DEFAULT_PATH",
    "DEFAULT_SHELL",
    "INSTRUCTIONS",
    "Instruction",
    "Stage",
    "parse",
]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_SHELL = ("/bin/sh", "-c")

INSTRUCTIONS = frozenset(
    {
        "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL", "MAINTAINER",
        "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
    }
)  # fmt: skip

# The flags each instruction takes: "str", "bool" (--link or --link=false) or "list" (repeatable: --mount).
_FLAGS: dict[str, dict[str, str]] = {
    "FROM": {"platform": "str"},
    "COPY": {"from": "str", "chown": "str", "chmod": "str", "link": "bool", "parents": "bool", "exclude": "list"},
    "ADD": {
        "chown": "str", "chmod": "str", "link": "bool", "checksum": "str", "keep-git-dir": "bool",
        "exclude": "list", "unpack": "bool",
    },
    "RUN": {"mount": "list", "network": "str", "security": "str"},
    "HEALTHCHECK": {
        "interval": "str", "timeout": "str", "start-period": "str", "start-interval": "str", "retries": "str",
    },
}  # fmt: skip
_EXPANDED_FLAGS = frozenset({"FROM", "COPY", "ADD", "RUN"})
# Docker's predefined ARGs: RUN sees them when given as build args, declared or not.
_PROXY_ARGS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy", "NO_PROXY",
               "no_proxy", "ALL_PROXY", "all_proxy")  # fmt: skip
_HEALTHCHECK_DURATIONS = (
    ("interval", "Interval"), ("timeout", "Timeout"), ("start-period", "StartPeriod"),
    ("start-interval", "StartInterval"),
)  # fmt: skip

_STAGE_NAME = re.compile(r"[a-z][a-z0-9._-]*\Z")
_DIRECTIVE = re.compile(r"[ \t]*#[ \t]*([A-Za-z][A-Za-z0-9]*)[ \t]*=[ \t]*(.+?)[ \t]*\Z")
_KNOWN_DIRECTIVES = frozenset({"escape", "syntax", "check"})


class Instruction(Record):
    """One instruction of a stage.

    ``cmd``: the instruction, upper case. ``args``: the raw text after the instruction and its flags, continuation
    lines joined, not substituted. ``flags``: ``--name=value`` flags, substituted for FROM/COPY/ADD/RUN (``"true"`` or
    ``"false"`` for boolean flags, a list for the repeatable ``--mount`` and ``--exclude``). ``line``: the line the
    instruction starts on. ``json_form``: the exec-form (JSON) arguments, else None.

    Parsed and substituted values: ``words`` (COPY/ADD: the sources then the destination; EXPOSE: the ports; VOLUME:
    the paths; WORKDIR/USER/STOPSIGNAL/MAINTAINER/ONBUILD: one string; HEALTHCHECK: the config's ``Test`` list),
    ``pairs`` (ENV/LABEL: ``(key, value)``; ARG: ``(name, default or None)``), ``from_stage`` (COPY --from: the
    index of the stage copied from, None for an image), ``build_args`` (the ARG values in scope after the
    instruction, which RUN sees in its environment, below the ENV values).
    """

    __slots__ = ("cmd", "args", "flags", "line", "json_form", "words", "pairs", "from_stage", "build_args")
    _defaults = {"flags": dict, "json_form": None, "words": list, "pairs": list, "from_stage": None,
                 "build_args": dict}  # fmt: skip


class Stage(Record):
    """One build stage: ``FROM [--platform=P] base [AS name]`` and its instructions.

    ``name`` is lower case (None without AS), ``base`` is substituted, ``base_stage`` is the index of the earlier
    stage ``base`` names (None for an image), ``line`` is the FROM line.
    """

    __slots__ = ("index", "name", "base", "platform", "instructions", "line", "base_stage")
    _defaults = {"name": None, "platform": None, "instructions": list, "line": 0, "base_stage": None}


# --------------------------------------------------------------------------------------------------------------------
# The parser


class _Parser:
    def __init__(
        self,
        filename: str,
        build_args: Mapping[str, str] | None,
        base_env: Callable[[str, str | None], Mapping[str, str] | Iterable[str] | None] | None,
    ) -> None:
        self.filename = filename
        self.build_args = {str(k): str(v) for k, v in (build_args or {}).items()}
        self.base_env = base_env
        self.auto = _platform_args(self.build_args)
        self.effective = {**self.auto, **self.build_args}
        self.escape = "\\"
        self.continuation = re.compile(r"\\[ \t]*\Z")
        self.global_args: dict[str, str | None] = {}
        self.stages: list[Stage] = []
        self.names: dict[str, int] = {}
        self.args: dict[str, str | None] = {}
        self.env: dict[str, str] = {}
        self.snapshot: dict[str, str] = {}
        self.final_scopes: list[tuple[dict[str, str | None], dict[str, str]]] = []
        self.pending_from: list[tuple[Instruction, str]] = []
        self.heredoc_line = 0

    def error(self, line: int, message: str) -> BuildError:
        return BuildError(f"{self.filename}:{line}: {message}")

    # -- lines -------------------------------------------------------------------------------------------------------

    def run(self, text: str) -> list[Stage]:
        lines = text.split("\n")
        lines[0] = lines[0].removeprefix("\ufeff")
        lines = [line.removesuffix("\r") for line in lines]
        i = self._directives(lines)
        n = len(lines)
        while i < n:
            start = i + 1
            first = lines[i].lstrip()
            i += 1
            if not first or first.startswith("#"):
                continue
            body, more = self._continued(first)
            parts = [body]
            while more and i < n:
                line = lines[i]
                i += 1
                stripped = line.lstrip()
                if not stripped or stripped.startswith("#"):
                    continue  # comments and empty lines inside a continued instruction vanish
                body, more = self._continued(line)
                parts.append(body)
            self._instruction("".join(parts), start)
        self._close_stage()
        if not self.stages:
            raise self.error(1, "no FROM instruction: a Dockerfile needs at least one build stage")
        for ins, ref in self.pending_from:
            later = self.names.get(ref.lower())
            if later is not None:
                raise self.error(
                    ins.line,
                    f"COPY --from={ref}: stage {ref!r} is defined later (line {self.stages[later].line}); "
                    "COPY --from can only use an earlier stage",
                )
            if not any(c in ref for c in ":/@."):
                known = ", ".join(repr(s.name) for s in self.stages if s.name) or "none"
                raise self.error(
                    ins.line,
                    f"COPY --from={ref}: no stage named {ref!r} before this line (named stages: {known}); "
                    f"to copy from an image, give its tag, e.g. {ref}:latest",
                )
        return self.stages

    def _directives(self, lines: list[str]) -> int:
        seen: set[str] = set()
        for i, line in enumerate(lines):
            m = _DIRECTIVE.match(line)
            if m is None:
                return i
            key, value = m.group(1).lower(), m.group(2)
            if key not in _KNOWN_DIRECTIVES:
                return i  # an unknown directive is a comment, and ends the directives
            if key in seen:
                raise self.error(i + 1, f"only one {key} parser directive can be used")
            seen.add(key)
            if key == "escape":
                if value not in ("\\", "`"):
                    raise self.error(i + 1, f"invalid escape token {value!r} does not match ` or \\")
                self.escape = value
                self.continuation = re.compile(re.escape(value) + r"[ \t]*\Z")
        return len(lines)

    def _continued(self, line: str) -> tuple[str, bool]:
        m = self.continuation.search(line)
        return (line[: m.start()], True) if m else (line, False)

    # -- instructions ------------------------------------------------------------------------------------------------

    def _scope(self) -> dict[str, str]:
        scope = {k: v for k, v in self.args.items() if v is not None}
        scope.update(self.env)
        return scope

    def _global_scope(self) -> dict[str, str]:
        scope = dict(self.auto)
        scope.update({k: v for k, v in self.global_args.items() if v is not None})
        return scope

    def _instruction(self, text: str, line: int) -> None:
        text = text.strip()
        parts = _SPLIT_WS.split(text, maxsplit=1)
        word = parts[0]
        rest = parts[1] if len(parts) > 1 else ""
        cmd = word.upper()
        if cmd not in INSTRUCTIONS:
            hint = ""
            if self.heredoc_line:
                hint = f" (heredocs, as on line {self.heredoc_line}, are not supported)"
            raise self.error(line, f"unknown instruction: {word}{hint}")
        if "<<" in rest and cmd in ("RUN", "COPY", "ADD") and not self.heredoc_line:
            self.heredoc_line = line
        try:
            self._dispatch(cmd, rest, line)
        except _Fail as e:
            raise self.error(line, str(e)) from None

    def _flags(self, cmd: str, raw: list[tuple[str, str | None]], scope: Mapping[str, str]) -> dict:
        spec = _FLAGS.get(cmd, {})
        flags: dict = {}
        for name, value in raw:
            kind = spec.get(name)
            if kind is None:
                raise _Fail(f"unknown flag for {cmd}: --{name}")
            if kind == "bool":
                if value is None:
                    value = "true"
                elif value.lower() in ("true", "false"):
                    value = value.lower()
                else:
                    raise _Fail(f"expecting boolean value for flag --{name}, not: {value}")
            elif value is None:
                raise _Fail(f"missing a value on flag: --{name}")
            elif cmd in _EXPANDED_FLAGS:
                value = _word(value, self.escape, scope)
            if kind == "list":
                flags.setdefault(name, []).append(value)
            elif name in flags:
                raise _Fail(f"duplicate flag specified: --{name}")
            else:
                flags[name] = value
        return flags

    def _dispatch(self, cmd: str, rest: str, line: int) -> None:
        raw_flags: list[tuple[str, str | None]] = []
        if cmd in _FLAGS:
            raw_flags, rest = _extract_flags(rest)
        if not rest:
            raise _Fail(f"{cmd} requires at least one argument")
        if cmd == "FROM":
            self._from(rest, raw_flags, line)
            return
        if not self.stages:
            if cmd != "ARG":
                raise _Fail(f"{cmd} before the first FROM (only ARG may come before FROM)")
            self._arg(None, rest, global_scope=True)
            return
        stage = self.stages[-1]
        scope = self._scope()
        ins = Instruction(cmd, rest, self._flags(cmd, raw_flags, scope), line)
        esc = self.escape
        if cmd in ("RUN", "CMD", "ENTRYPOINT"):
            ins.json_form = _json_list(rest)
            if cmd == "RUN" and ins.json_form == []:
                raise _Fail("RUN requires at least one argument")
        elif cmd == "SHELL":
            ins.json_form = _json_list(rest)
            if ins.json_form is None:
                raise _Fail("SHELL requires the arguments to be in JSON form")
            if not ins.json_form:
                raise _Fail("SHELL requires at least one argument")
        elif cmd in ("COPY", "ADD"):
            ins.json_form = _json_list(rest)
            raw = ins.json_form if ins.json_form is not None else rest.split()
            ins.words = [_word(w, esc, scope) for w in raw]
            if len(ins.words) < 2:
                raise _Fail(f"{cmd} requires at least two arguments: a source and a destination")
            if "from" in ins.flags:
                self._copy_from(ins, stage)
        elif cmd in ("ENV", "LABEL"):
            pairs = [(_word(k, esc, scope), _word(v, esc, scope)) for k, v in _name_values(rest, cmd, esc)]
            if any(not k for k, _ in pairs):
                raise _Fail(f"{cmd} names can not be blank")
            ins.pairs = pairs
            if cmd == "ENV":
                self.env.update(pairs)
        elif cmd == "ARG":
            self._arg(ins, rest, global_scope=False)
        elif cmd in ("WORKDIR", "USER", "STOPSIGNAL"):
            value = _word(rest, esc, scope)
            if not value.strip():
                raise _Fail(f"{cmd} cannot be empty ({rest!r} substitutes to nothing)")
            ins.words = [value]
        elif cmd == "MAINTAINER":
            ins.words = [rest]
        elif cmd == "EXPOSE":
            ins.words = _words(rest, esc, scope)
            if not ins.words:
                raise _Fail(f"EXPOSE requires at least one port ({rest!r} substitutes to nothing)")
            for port in ins.words:
                _port_keys(port)
        elif cmd == "VOLUME":
            ins.json_form = _json_list(rest)
            raw = ins.json_form if ins.json_form is not None else rest.split()
            ins.words = [_word(v, esc, scope).strip() for v in raw]
            if not ins.words or not all(ins.words):
                raise _Fail("VOLUME specified can not be an empty string")
        elif cmd == "HEALTHCHECK":
            self._healthcheck(ins, rest)
        elif cmd == "ONBUILD":
            trigger = _SPLIT_WS.split(rest, maxsplit=1)[0].upper()
            if trigger == "ONBUILD":
                raise _Fail("chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
            if trigger in ("FROM", "MAINTAINER"):
                raise _Fail(f"{trigger} isn't allowed as an ONBUILD trigger")
            if trigger not in INSTRUCTIONS:
                raise _Fail(f"unknown instruction in ONBUILD: {trigger}")
            ins.words = [rest]
        ins.build_args = self.snapshot
        stage.instructions.append(ins)

    def _from(self, rest: str, raw_flags: list[tuple[str, str | None]], line: int) -> None:
        self._close_stage()
        scope = self._global_scope()
        flags = self._flags("FROM", raw_flags, scope)
        words = rest.split()
        if len(words) not in (1, 3) or (len(words) == 3 and words[1].lower() != "as"):
            raise _Fail("FROM requires either one or three arguments: FROM [--platform=P] IMAGE [AS NAME]")
        base = _word(words[0], self.escape, scope).strip()
        if not base:
            raise _Fail(f"base name ({words[0]}) should not be blank")
        name = None
        if len(words) == 3:
            name = words[2].lower()
            if not _STAGE_NAME.match(name):
                raise _Fail(f"invalid stage name {words[2]!r}: a letter, then letters, digits, '-', '_' or '.'")
            if name in self.names:
                raise _Fail(f"duplicate stage name {name!r} (also on line {self.stages[self.names[name]].line})")
        index = len(self.stages)
        base_stage = self.names.get(base.lower())
        stage = Stage(index, name, base, flags.get("platform") or None, [], line, base_stage)
        self.stages.append(stage)
        if name:
            self.names[name] = index
        if base_stage is not None:
            args, env = self.final_scopes[base_stage]
            self.args, self.env = dict(args), dict(env)
        else:
            self.args, self.env = {}, self._base_env(base, stage.platform)
        self._snap()

    def _base_env(self, base: str, platform: str | None) -> dict[str, str]:
        found = self.base_env(base, platform) if self.base_env is not None and base.lower() != "scratch" else None
        if found is None:
            return {"PATH": DEFAULT_PATH}
        if isinstance(found, Mapping):
            return {str(k): str(v) for k, v in found.items()}
        env = {}
        for item in found:
            key, _, value = str(item).partition("=")
            env[key] = value
        return env

    def _close_stage(self) -> None:
        if len(self.final_scopes) < len(self.stages):
            self.final_scopes.append((dict(self.args), dict(self.env)))

    def _snap(self) -> None:
        snap = {k: v for k, v in self.args.items() if v is not None}
        for key in _PROXY_ARGS:
            if key in self.build_args:
                snap.setdefault(key, self.build_args[key])
        self.snapshot = snap

    def _arg(self, ins: Instruction | None, rest: str, *, global_scope: bool) -> None:
        scope = self._global_scope() if global_scope else self._scope()
        pairs: list[tuple[str, str | None]] = []
        for word in _split_words(rest, self.escape):
            key, eq, value = word.partition("=")
            key = _word(key, self.escape, scope)
            if not key:
                raise _Fail("ARG names can not be blank")
            pairs.append((key, _word(value, self.escape, scope) if eq else None))
        target = self.global_args if global_scope else self.args
        for key, default in pairs:
            if key in self.effective:
                value = self.effective[key]
            elif default is not None:
                value = default
            elif not global_scope:
                value = self.global_args.get(key)
            else:
                value = None
            target[key] = value
        if ins is not None:
            ins.pairs = pairs
            self._snap()

    def _copy_from(self, ins: Instruction, stage: Stage) -> None:
        ref = ins.flags["from"]
        if not ref:
            raise _Fail("COPY --from needs a stage name, a stage number or an image")
        if re.fullmatch(r"[0-9]+", ref):
            number = int(ref) if len(ref) < 10 else stage.index
            if number >= stage.index:
                raise _Fail(
                    f"COPY --from={ref}: stage {ref} is not defined before this one "
                    f"(stages count from 0; this is stage {stage.index})"
                )
            ins.from_stage = number
            return
        found = self.names.get(ref.lower())
        if found == stage.index:
            raise _Fail(f"COPY --from={ref}: a stage cannot copy from itself")
        if found is None:
            self.pending_from.append((ins, ref))  # a later stage, an image or a mistake: told apart at the end
        else:
            ins.from_stage = found

    def _healthcheck(self, ins: Instruction, rest: str) -> None:
        parts = _SPLIT_WS.split(rest, maxsplit=1)
        kind = parts[0].upper()
        command = parts[1].strip() if len(parts) > 1 else ""
        if kind == "NONE":
            if command or ins.flags:
                raise _Fail("HEALTHCHECK NONE takes no arguments")
            ins.words = ["NONE"]
        elif kind == "CMD":
            if not command:
                raise _Fail("missing command after HEALTHCHECK CMD")
            ins.json_form = _json_list(command)
            ins.words = ["CMD", *ins.json_form] if ins.json_form is not None else ["CMD-SHELL", command]
        else:
            raise _Fail(f"unknown type {parts[0]!r} in HEALTHCHECK (try CMD)")
        for flag, _ in _HEALTHCHECK_DURATIONS:
            if flag in ins.flags:
                ns = _go_duration(ins.flags[flag])
                if ns < 0 or 0 < ns < 10**6:
                    raise _Fail(f"HEALTHCHECK --{flag} cannot be less than 1ms")
        if "retries" in ins.flags:
            if not re.fullmatch(r"[0-9]{1,9}", ins.flags["retries"]):
                raise _Fail(f"HEALTHCHECK --retries must be a whole number, not {ins.flags['retries']!r}")


def parse(
    text: str,
    *,
    filename: str = "Dockerfile",
    build_args: Mapping[str, str] | None = None,
    base_env: Callable[[str, str | None], Mapping[str, str] | Iterable[str] | None] | None = None,
) -> list[Stage]:
    """Parse a Dockerfile into its stages; any error is a BuildError whose message starts with ``FILE:LINE:``.

    ``build_args`` are ``--build-arg`` values. ``base_env(image, platform)``, when given, returns the environment of
    an image a stage starts from (a mapping, a list of ``K=V``, or None for "unknown"), used for substitution.
    """
    return _Parser(filename, build_args, base_env).run(text)
