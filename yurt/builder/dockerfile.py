"""Dockerfiles: parse them, compute the image config they produce, apply .dockerignore, convert to definition files.

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
"""

from __future__ import annotations

import copy
import json
import os
import platform as _platform
import posixpath
import re
import shlex
from collections.abc import Callable, Iterable, Iterator, Mapping

from yurt.errors import BuildError
from yurt.record import Record

__all__ = [
    "DEFAULT_PATH",
    "DEFAULT_SHELL",
    "INSTRUCTIONS",
    "Instruction",
    "Matcher",
    "Stage",
    "copy_sources",
    "image_config",
    "load_dockerignore",
    "parse",
    "parse_dockerignore",
    "to_deffile",
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

_WS = " \t\n\r\f\v"
_SPLIT_WS = re.compile(r"[ \t\n\r\f\v]+")
_DIGITS = frozenset("0123456789")
_NAME_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_NAME_CHARS = _NAME_START | _DIGITS
_MAX_NESTING = 32
_STAGE_NAME = re.compile(r"[a-z][a-z0-9._-]*\Z")
_DIRECTIVE = re.compile(r"[ \t]*#[ \t]*([A-Za-z][A-Za-z0-9]*)[ \t]*=[ \t]*(.+?)[ \t]*\Z")
_KNOWN_DIRECTIVES = frozenset({"escape", "syntax", "check"})
_PORT = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?(?:/([A-Za-z]+))?\Z")
_DURATION_PART = re.compile(r"([0-9]{0,30}(?:\.[0-9]{0,30})?)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1, "us": 10**3, "µs": 10**3, "μs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9,
                   "h": 3600 * 10**9}  # fmt: skip
_URL = re.compile(r"(?i)(?:https?|git)://|git@")
_ARCHIVE = re.compile(r"(?i)\.(?:tar|tar\.(?:gz|bz2|xz|zst|lz4|z)|tgz|tbz2?|txz|tzst)\Z")
_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Variables bash (which may be /bin/sh) makes read-only: assigning one ends a POSIX-mode shell.
_READONLY_SHELL_VARS = frozenset({"UID", "EUID", "PPID", "BASHOPTS", "SHELLOPTS", "BASH_VERSINFO", "BASHPID", "GROUPS"})
_ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm/v7",
           "armv6l": "arm/v6", "i386": "386", "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x",
           "riscv64": "riscv64", "loongarch64": "loong64"}  # fmt: skip


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


class _Fail(Exception):
    """A parse error without its location (the parser adds FILE:LINE:)."""


class _BadPattern(Exception):
    """A malformed glob pattern."""


# --------------------------------------------------------------------------------------------------------------------
# Words: quotes, escapes and variable substitution


class _Words:
    __slots__ = ("split", "words", "cur", "started")

    def __init__(self, split: bool) -> None:
        self.split = split
        self.words: list[str] = []
        self.cur: list[str] = []
        self.started = False

    def add(self, text: str) -> None:
        self.cur.append(text)
        self.started = True

    def expansion(self, text: str) -> None:
        if not self.split:
            self.cur.append(text)
            return
        for ch in text:  # an unquoted expansion is split into words, as in a shell
            if ch in _WS:
                self.blank()
            else:
                self.add(ch)

    def blank(self) -> None:
        if self.started:
            self.words.append("".join(self.cur))
            self.cur = []
            self.started = False

    def finish(self) -> list[str]:
        if not self.split:
            return ["".join(self.cur)]
        self.blank()
        return self.words


class _Scanner:
    """Docker's word processing of one string (BuildKit's shell lexer rules)."""

    __slots__ = ("s", "i", "esc", "env", "depth")

    def __init__(self, text: str, escape: str, env: Mapping[str, str]) -> None:
        self.s = text
        self.i = 0
        self.esc = escape
        self.env = env
        self.depth = 0

    def scan(self, split: bool, stops: str = "") -> list[str]:
        """Process up to the end or to an unquoted, unescaped character of ``stops`` (left for the caller)."""
        s, n, esc = self.s, len(self.s), self.esc
        acc = _Words(split)
        while self.i < n:
            ch = s[self.i]
            if ch in stops:
                break
            if ch == esc:
                self.i += 1
                if self.i < n:  # an escape at the very end is dropped
                    acc.add(s[self.i])
                    self.i += 1
            elif ch == "'":
                end = s.find("'", self.i + 1)
                if end < 0:
                    raise _Fail("unexpected end of statement while looking for matching single-quote")
                acc.add(s[self.i + 1 : end])
                self.i = end + 1
            elif ch == '"':
                acc.add(self._double_quoted())
            elif ch == "$":
                acc.expansion(self._dollar())
            elif split and ch in _WS:
                acc.blank()
                self.i += 1
            else:
                acc.add(ch)
                self.i += 1
        return acc.finish()

    def _double_quoted(self) -> str:
        s, n, esc = self.s, len(self.s), self.esc
        self.i += 1
        out: list[str] = []
        while True:
            if self.i >= n:
                raise _Fail("unexpected end of statement while looking for matching double-quote")
            ch = s[self.i]
            if ch == '"':
                self.i += 1
                return "".join(out)
            if ch == "$":
                out.append(self._dollar())
            elif ch == esc and self.i + 1 < n and s[self.i + 1] in ('"', "$", esc):
                out.append(s[self.i + 1])
                self.i += 2
            else:  # other escapes stay as they are inside double quotes
                out.append(ch)
                self.i += 1

    def _name(self) -> str:
        s, n, start = self.s, len(self.s), self.i
        if start < n and s[start] in _DIGITS:
            while self.i < n and s[self.i] in _DIGITS:
                self.i += 1
        elif start < n and s[start] in _NAME_START:
            while self.i < n and s[self.i] in _NAME_CHARS:
                self.i += 1
        return s[start : self.i]

    def _dollar(self) -> str:
        self.i += 1
        if self.i >= len(self.s) or self.s[self.i] != "{":
            name = self._name()
            return self.env.get(name, "") if name else "$"
        self.i += 1
        self.depth += 1
        if self.depth > _MAX_NESTING:
            raise _Fail("variable substitutions are nested too deeply")
        try:
            return self._braced()
        finally:
            self.depth -= 1

    def _modifier_word(self, stops: str = "}") -> tuple[str, str]:
        word = self.scan(False, stops)[0]
        if self.i >= len(self.s):
            raise _Fail("missing '}' in variable substitution")
        stop = self.s[self.i]
        self.i += 1
        return word, stop

    def _braced(self) -> str:
        s, n = self.s, len(self.s)
        name = self._name()
        if not name:
            raise _Fail("bad substitution: a variable name must follow '${'")
        if self.i >= n:
            raise _Fail("missing '}' in variable substitution")
        op = s[self.i]
        value = self.env.get(name)
        if op == "}":
            self.i += 1
            return value or ""
        if op == ":":
            self.i += 1
            kind = s[self.i] if self.i < n else ""
            if not kind or kind not in "-+?":
                raise _Fail(f"unsupported modifier (:{kind}) in substitution of {name}")
            self.i += 1
            word, _ = self._modifier_word()
            if kind == "-":
                return value if value else word
            if kind == "+":
                return word if value else ""
            if not value:
                raise _Fail(f"{name}: {word or 'parameter null or not set'}")
            return value
        if op in "-+?":
            self.i += 1
            word, _ = self._modifier_word()
            if op == "-":
                return value if value is not None else word
            if op == "+":
                return word if value is not None else ""
            if value is None:
                raise _Fail(f"{name}: {word or 'parameter not set'}")
            return value
        if op in "#%":
            self.i += 1
            longest = self.i < n and s[self.i] == op
            if longest:
                self.i += 1
            pattern, _ = self._modifier_word()
            return _trim(value or "", pattern, prefix=op == "#", longest=longest)
        if op == "/":
            self.i += 1
            every = self.i < n and s[self.i] == "/"
            if every:
                self.i += 1
            pattern, stop = self._modifier_word("/}")
            replacement = self._modifier_word()[0] if stop == "/" else ""
            return _replace(value or "", pattern, replacement, every=every)
        raise _Fail(f"unsupported modifier ({op}) in substitution of {name}")


def _word(text: str, escape: str, env: Mapping[str, str]) -> str:
    """One word: quotes removed, escapes applied, variables substituted, blanks kept."""
    return _Scanner(text, escape, env).scan(False)[0]


def _words(text: str, escape: str, env: Mapping[str, str]) -> list[str]:
    """Like _word, then split on unquoted blanks (substituted values included)."""
    return _Scanner(text, escape, env).scan(True)


def _char_class(p: str, i: int, *, shell: bool) -> tuple[str, int]:
    """The regex of the class whose ``[`` is just before ``p[i]``, and the index after its ``]``.

    Go's filepath.Match rules (``^`` negates, ``-`` and ``]`` must be escaped, never matches ``/`` when negated), or
    with ``shell`` a shell's (``!`` negates too, a leading ``]`` and a trailing ``-`` are members)."""
    n = len(p)
    negate = False
    if i < n and (p[i] == "^" or (shell and p[i] == "!")):
        negate = True
        i += 1
    ranges: list[tuple[str, str]] = []
    while True:
        if i >= n:
            raise _BadPattern("unterminated character class")
        if p[i] == "]":
            if ranges:
                i += 1
                break
            if not shell:
                raise _BadPattern("empty character class")
        lo, i = _class_char(p, i, shell)
        hi = lo
        if i + 1 < n and p[i] == "-" and p[i + 1] != "]":
            hi, i = _class_char(p, i + 1, shell)
        elif not shell and i < n and p[i] == "-":
            raise _BadPattern("bad range in character class")
        ranges.append((lo, hi))
    parts = []
    for lo, hi in ranges:
        if lo == hi:
            parts.append(re.escape(lo))
        elif lo < hi:  # a backwards range matches nothing
            parts.append(f"{re.escape(lo)}-{re.escape(hi)}")
    body = "".join(parts)
    if negate:
        body += "" if shell else "/"
        return (f"[^{body}]" if body else "(?s:.)"), i
    return (f"[{body}]" if body else "(?!)"), i


def _class_char(p: str, i: int, shell: bool) -> tuple[str, int]:
    if i >= len(p):
        raise _BadPattern("unterminated character class")
    c = p[i]
    if not shell and c in "-]":
        raise _BadPattern("bad character class")
    if c == "\\":
        i += 1
        if i >= len(p):
            raise _BadPattern("trailing backslash")
        c = p[i]
    return c, i + 1


def _shell_pattern(pattern: str) -> re.Pattern[str]:
    """A shell glob (``*`` matches anything, ``/`` included) as a regex, for ${V#p}, ${V%p} and ${V/p/r}."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            while i < n and pattern[i] == "*":
                i += 1
            out.append(".*")
            continue
        if c == "?":
            out.append(".")
        elif c == "[":
            try:
                rx, i = _char_class(pattern, i + 1, shell=True)
            except _BadPattern:
                out.append(re.escape(c))  # an unterminated class is a plain '['
                i += 1
            else:
                out.append(rx)
            continue
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.S)


def _trim(value: str, pattern: str, *, prefix: bool, longest: bool) -> str:
    rx = _shell_pattern(pattern)
    n = len(value)
    for k in range(n, -1, -1) if longest else range(n + 1):
        if prefix and rx.fullmatch(value, 0, k):
            return value[k:]
        if not prefix and rx.fullmatch(value, n - k):
            return value[: n - k]
    return value


def _replace(value: str, pattern: str, replacement: str, *, every: bool) -> str:
    if not pattern:
        return value
    rx = _shell_pattern(pattern)
    out: list[str] = []
    pos, n = 0, len(value)
    while pos <= n:
        m = rx.search(value, pos)
        while m is not None and m.end() == m.start():  # skip empty matches
            m = rx.search(value, m.start() + 1) if m.start() < n else None
        if m is None:
            break
        out += [value[pos : m.start()], replacement]
        pos = m.end()
        if not every:
            break
    out.append(value[pos:])
    return "".join(out)


# --------------------------------------------------------------------------------------------------------------------
# Instruction arguments


def _json_list(rest: str) -> list[str] | None:
    """The exec (JSON) form's arguments, or None for shell form."""
    text = rest.lstrip()
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        if any("\0" in item for item in value):
            raise _Fail("a NUL character (\\u0000) in the JSON form: no program can receive it")
        return value
    return None


def _extract_flags(rest: str) -> tuple[list[tuple[str, str | None]], str]:
    """Leading ``--name[=value]`` words (quotes and backslashes processed), and the text after them."""
    flags: list[tuple[str, str | None]] = []
    i, n = 0, len(rest)
    while True:
        while i < n and rest[i] in _WS:
            i += 1
        if not rest.startswith("--", i):
            break
        chars: list[str] = []
        quote = ""
        while i < n:
            ch = rest[i]
            if quote:
                if ch == quote:
                    quote = ""
                    i += 1
                    continue
            elif ch in _WS:
                break
            elif ch in "'\"":
                quote = ch
                i += 1
                continue
            if ch == "\\" and i + 1 < n:
                i += 1
                ch = rest[i]
            chars.append(ch)
            i += 1
        word = "".join(chars)
        if word == "--":
            break
        name, eq, value = word[2:].partition("=")
        flags.append((name, value if eq else None))
    return flags, rest[i:].strip()


def _split_words(rest: str, escape: str) -> list[str]:
    """Split on blanks outside quotes, keeping quotes and escapes for the later word processing."""
    words: list[str] = []
    cur: list[str] = []
    in_word = blank_ok = False
    quote = ""
    i, n = 0, len(rest)
    while i < n:
        ch = rest[i]
        if not in_word:
            if ch in _WS:
                i += 1
                continue
            in_word = True
        if quote:
            if ch == quote:
                quote = ""
            elif ch == escape and quote != "'":
                if i + 1 >= n:
                    i += 1
                    continue
                cur.append(ch)
                i += 1
                ch = rest[i]
        elif ch in _WS:
            if blank_ok or cur:
                words.append("".join(cur))
            cur, in_word, blank_ok = [], False, False
            i += 1
            continue
        elif ch in "'\"":
            quote, blank_ok = ch, True
        elif ch == escape:
            if i + 1 >= n:
                i += 1
                continue
            cur.append(ch)
            i += 1
            ch = rest[i]
        cur.append(ch)
        i += 1
    if in_word and (blank_ok or cur):
        words.append("".join(cur))
    return words


def _name_values(rest: str, cmd: str, escape: str) -> list[tuple[str, str]]:
    """ENV/LABEL arguments: ``K=V ...`` or the legacy ``K V with blanks``, not yet processed."""
    words = _split_words(rest, escape)
    if not words:
        raise _Fail(f"{cmd} requires at least one argument")
    if "=" not in words[0]:
        parts = _SPLIT_WS.split(rest.strip(), maxsplit=1)
        if len(parts) < 2 or not parts[1]:
            raise _Fail(f"{cmd} must have two arguments")
        return [(parts[0], parts[1])]
    pairs = []
    for word in words:
        key, eq, value = word.partition("=")
        if not eq:
            raise _Fail(f"syntax error - can't find = in {word!r}. Must be of the form: name=value")
        pairs.append((key, value))
    return pairs


def _port_keys(port: str) -> list[str]:
    """``80``, ``53/udp`` or ``8000-8002/tcp`` as ExposedPorts keys."""
    m = _PORT.match(port)
    if m is None:
        raise _Fail(f"invalid port {port!r} in EXPOSE (expected PORT[-PORT][/PROTOCOL])")
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) else first
    proto = (m.group(3) or "tcp").lower()
    if proto not in ("tcp", "udp", "sctp"):
        raise _Fail(f"invalid protocol {m.group(3)!r} in EXPOSE {port} (tcp, udp or sctp)")
    if last > 65535 or first > last:
        raise _Fail(f"invalid port range {port!r} in EXPOSE")
    return [f"{p}/{proto}" for p in range(first, last + 1)]


def _go_duration(text: str) -> int:
    """A Go duration (``30s``, ``1m30s``, ``1.5h``, ``250ms``) in nanoseconds."""
    s = text
    sign = 1
    if s and s[0] in "+-":
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise _Fail(f"invalid duration {text!r}")
    total = pos = 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None or m.group(1) in ("", "."):
            raise _Fail(f"invalid duration {text!r} (expected e.g. 30s, 1m30s, 250ms)")
        whole, _, frac = m.group(1).partition(".")
        unit = _DURATION_UNITS[m.group(2)]
        total += int(whole or "0") * unit + (int(frac) * unit // 10 ** len(frac) if frac else 0)
        pos = m.end()
    return sign * total


def _host_platform() -> str:
    machine = _platform.machine().lower()
    return "linux/" + _ARCHES.get(machine, machine or "amd64")


def _platform_args(build_args: Mapping[str, str]) -> dict[str, str]:
    """The automatic BUILD*/TARGET* args."""
    build = _host_platform()
    target = build_args.get("TARGETPLATFORM") or build
    out = {}
    for prefix, value in (("BUILD", build), ("TARGET", target)):
        os_name, _, rest = value.partition("/")
        arch, _, variant = rest.partition("/")
        out.update({f"{prefix}PLATFORM": value, f"{prefix}OS": os_name, f"{prefix}ARCH": arch,
                    f"{prefix}VARIANT": variant})  # fmt: skip
    return out


def _clean(path: str) -> str:
    """Go's path.Clean."""
    if not path:
        return "."
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    return cleaned


def _workdir(current: str, requested: str) -> str:
    if not requested.startswith("/"):
        requested = current.rstrip("/") + "/" + requested
    return _clean(requested)


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


# --------------------------------------------------------------------------------------------------------------------
# The image config


def _set_env(env: list[str], key: str, value: str) -> None:
    for i, item in enumerate(env):
        if item.partition("=")[0] == key:
            env[i] = f"{key}={value}"
            return
    env.append(f"{key}={value}")


def _healthcheck_config(ins: Instruction) -> dict:
    config: dict = {"Test": list(ins.words)}
    if ins.words == ["NONE"]:
        return config
    for flag, key in _HEALTHCHECK_DURATIONS:
        if flag in ins.flags:
            ns = _go_duration(ins.flags[flag])
            if ns:
                config[key] = ns
    if int(ins.flags.get("retries", "0")):
        config["Retries"] = int(ins.flags["retries"])
    return config


def image_config(stage: Stage, base: Mapping | None = None) -> dict:
    """The OCI image config's ``config`` member after the stage's instructions, applied on top of ``base``.

    ``base`` is the config of the image (or earlier stage) the stage starts from. Docker's rules: CMD and ENTRYPOINT in
    shell form run through SHELL (default ``/bin/sh -c``); ENTRYPOINT drops a CMD inherited from the base but keeps
    one set earlier in the same stage; a relative WORKDIR is relative to the previous one; the base's ONBUILD
    triggers are not inherited (running them is the caller's job); PATH gets the default when nothing sets it.
    """
    config: dict = copy.deepcopy(dict(base)) if base else {}
    config.pop("OnBuild", None)
    env = list(config.get("Env") or [])
    shell = list(config.get("Shell") or DEFAULT_SHELL)
    cmd_set = False
    for ins in stage.instructions:
        cmd = ins.cmd
        if cmd == "ENV":
            for key, value in ins.pairs:
                _set_env(env, key, value)
        elif cmd in ("CMD", "ENTRYPOINT"):
            value = list(ins.json_form) if ins.json_form is not None else [*shell, ins.args]
            if cmd == "CMD":
                config["Cmd"] = value
                cmd_set = True
            else:
                config["Entrypoint"] = value
                if not cmd_set:
                    config["Cmd"] = None
        elif cmd == "SHELL":
            shell = list(ins.json_form or DEFAULT_SHELL)
            config["Shell"] = list(shell)
        elif cmd == "WORKDIR":
            config["WorkingDir"] = _workdir(config.get("WorkingDir") or "/", ins.words[0])
        elif cmd == "USER":
            config["User"] = ins.words[0]
        elif cmd == "LABEL":
            config["Labels"] = {**(config.get("Labels") or {}), **dict(ins.pairs)}
        elif cmd == "EXPOSE":
            ports = dict(config.get("ExposedPorts") or {})
            for port in ins.words:
                for key in _port_keys(port):
                    ports[key] = {}
            config["ExposedPorts"] = ports
        elif cmd == "VOLUME":
            config["Volumes"] = {**(config.get("Volumes") or {}), **{v: {} for v in ins.words}}
        elif cmd == "STOPSIGNAL":
            config["StopSignal"] = ins.words[0]
        elif cmd == "HEALTHCHECK":
            config["Healthcheck"] = _healthcheck_config(ins)
        elif cmd == "ONBUILD":
            config["OnBuild"] = [*(config.get("OnBuild") or []), ins.words[0]]
    if not any(item.partition("=")[0] == "PATH" for item in env):
        env.insert(0, f"PATH={DEFAULT_PATH}")
    config["Env"] = env
    return config


# --------------------------------------------------------------------------------------------------------------------
# .dockerignore and COPY/ADD sources


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


# --------------------------------------------------------------------------------------------------------------------
# Conversion to a definition file


def _display(ins: Instruction) -> str:
    flags = []
    for name, value in ins.flags.items():
        for item in value if isinstance(value, list) else [value]:
            flags.append(f"--{name}={item}")
    return " ".join([ins.cmd, *flags, ins.args])


class _DefStage:
    """One stage of a definition file, built from a Dockerfile stage (and the stages it starts from)."""

    def __init__(self, stage: Stage, stages: list[Stage], names: dict[int, str], context_dir: str | None,
                 warnings: list[str]) -> None:  # fmt: skip
        self.stage = stage
        self.stages = stages
        self.names = names
        self.label = names[stage.index]
        self.context_dir = context_dir
        self.warnings = warnings
        self.notes: list[str] = []
        self.files: list[str] = []
        self.files_from: dict[str, list[str]] = {}
        self.environment: list[str] = []
        self.post: list[str] = []
        self.labels: list[str] = []
        self.runscript: list[str] = []
        self.workdir: str | None = None
        self.dirs: set[str] = set()
        self.shell = list(DEFAULT_SHELL)
        self.ran = False

    def warn(self, line: int, text: str) -> None:
        self.warnings.append(f"stage {self.label}, line {line}: {text}")

    def skip(self, ins: Instruction, why: str) -> None:
        self.notes.append(f"# not converted (line {ins.line}): {_display(ins)}")
        self.warn(ins.line, f"{ins.cmd} not converted: {why}")

    def render(self) -> str:
        chain = [self.stage]
        while chain[0].base_stage is not None:
            chain.insert(0, self.stages[chain[0].base_stage])
        root = chain[0]
        if root.base.lower() == "scratch":
            header = ["Bootstrap: scratch"]
        else:
            header = ["Bootstrap: docker", f"From: {root.base}"]
        header.append(f"Stage: {self.label}")
        if len(chain) > 1:
            parents = ", ".join(self.names[s.index] for s in chain[:-1])
            self.notes.append(f"# FROM {self.stage.base}: the instructions of stage {parents} are repeated here")
            self.warn(self.stage.line, f"FROM {self.stage.base}: a definition file cannot start from another stage, "
                                       f"so the instructions of stage {parents} are repeated")  # fmt: skip
        for s in chain:
            if s.platform:
                self.notes.append(f"# not converted (line {s.line}): FROM --platform={s.platform}")
                self.warn(s.line, f"FROM --platform={s.platform} not converted: build with --arch instead")
            for ins in s.instructions:
                self.convert(ins)
        self.make_runscript(chain)
        out = header + self.notes
        sections = [("%files", self.files)]
        sections += [(f"%files from {name}", lines) for name, lines in self.files_from.items()]
        sections += [("%environment", self.environment), ("%post", self.post), ("%runscript", self.runscript),
                     ("%labels", self.labels)]  # fmt: skip
        for title, lines in sections:
            if lines:
                out += ["", title, *(f"    {line}" for line in lines)]
        return "\n".join(out) + "\n"

    def make_runscript(self, chain: list[Stage]) -> None:
        config: dict | None = None
        for s in chain:
            config = image_config(s, config)
        assert config is not None
        sets = {ins.cmd for s in chain for ins in s.instructions}
        if "CMD" not in sets and "ENTRYPOINT" not in sets:
            return
        entrypoint = config.get("Entrypoint") or []
        cmd = config.get("Cmd") or []
        if cmd:
            self.runscript.append(f'if [ "$#" -eq 0 ]; then set -- {shlex.join(cmd)}; fi')
        self.runscript.append(f'exec {shlex.join(entrypoint)} "$@"' if entrypoint else 'exec "$@"')
        if "ENTRYPOINT" not in sets:
            self.warn(chain[-1].line, "CMD without ENTRYPOINT: the base image's ENTRYPOINT, if it has one, is not "
                                      "part of the runscript")  # fmt: skip
        if config.get("WorkingDir"):
            self.warn(chain[-1].line, f"WORKDIR {config['WorkingDir']} applies to the build only: the runscript "
                                      "starts in the caller's directory")  # fmt: skip

    def export(self, key: str, value: str, line: int, *, environment: bool) -> None:
        if not _SHELL_NAME.match(key):
            self.warn(line, f"variable {key!r} is not a valid shell name: not exported")
            return
        if key in _READONLY_SHELL_VARS:
            self.warn(line, f"variable {key} is read-only in bash: not exported")
            return
        text = f"export {key}={shlex.quote(value)}"
        self.post.append(text)
        if environment:
            self.environment.append(text)

    def convert(self, ins: Instruction) -> None:
        cmd = ins.cmd
        if cmd == "RUN":
            self.run(ins)
        elif cmd in ("COPY", "ADD"):
            self.copy(ins)
        elif cmd == "ENV":
            for key, value in ins.pairs:
                self.export(key, value, ins.line, environment=True)
        elif cmd == "ARG":
            for key, _ in ins.pairs:
                if ins.build_args.get(key) is not None:
                    self.export(key, ins.build_args[key], ins.line, environment=False)
        elif cmd == "LABEL":
            for key, value in ins.pairs:
                if any(c in _WS for c in key) or "\n" in value:
                    self.warn(ins.line, f"LABEL {key!r}: blanks in the name or line breaks in the value are replaced")
                self.labels.append(f"{'_'.join(key.split())} {' '.join(value.splitlines())}".rstrip())
        elif cmd == "MAINTAINER":
            self.labels.append(f"Author {ins.words[0]}")
        elif cmd == "WORKDIR":
            self.workdir = _workdir(self.workdir or "/", ins.words[0])
            self.dirs.add(self.workdir)
            self.post += [f"mkdir -p {shlex.quote(self.workdir)}", f"cd {shlex.quote(self.workdir)}"]
        elif cmd == "SHELL":
            self.shell = list(ins.json_form or DEFAULT_SHELL)
        elif cmd in ("CMD", "ENTRYPOINT"):
            pass  # the runscript, at the end
        elif cmd == "USER":
            self.skip(ins, "a definition file cannot change user; %post runs as root and the container as the caller")
        elif cmd == "EXPOSE":
            self.skip(ins, "containers use the host's network: there are no ports to publish")
        elif cmd == "VOLUME":
            self.skip(ins, "no volumes: bind host directories at run time with --bind")
        elif cmd == "STOPSIGNAL":
            self.skip(ins, "no stop signal in a definition file")
        elif cmd == "HEALTHCHECK":
            self.skip(ins, "no health checks in a definition file")
        elif cmd == "ONBUILD":
            self.skip(ins, "no build triggers in a definition file")

    def run(self, ins: Instruction) -> None:
        self.ran = True
        if ins.flags:
            flags = " ".join(f"--{name}" for name in ins.flags)
            self.warn(ins.line, f"RUN {flags} not converted: the command runs without it")
        if ins.json_form is not None:
            text = shlex.join(ins.json_form)
        elif tuple(self.shell) == DEFAULT_SHELL:
            text = ins.args
        else:
            text = shlex.join([*self.shell, ins.args])
        # A subshell per RUN, as Docker runs each in its own shell: `cd` and `exit` stay inside, and its status
        # (that of the last command, whatever `set -e` says) stops the build.
        if "#" in text or "\n" in text:
            self.post += ["(", text, ") || exit $?"]
        else:
            self.post.append(f"( {text} ) || exit $?")

    def copy(self, ins: Instruction) -> None:
        sources, dest = ins.words[:-1], ins.words[-1]
        if ins.cmd == "ADD" and any(_URL.match(s) or _ARCHIVE.search(s) for s in sources):
            self.skip(ins, "ADD of a URL or of a local archive (which Docker unpacks) has no %files equivalent: "
                           "fetch or unpack it in %post")  # fmt: skip
            return
        if "from" in ins.flags and ins.from_stage is None:
            self.skip(ins, f"--from={ins.flags['from']} is an image: %files from can only name a stage")
            return
        other = sorted(set(ins.flags) - {"from", "chown", "chmod"})
        if other:
            self.warn(ins.line, f"{ins.cmd} {' '.join('--' + f for f in other)} not converted")
        if self.ran:
            self.warn(ins.line, f"{ins.cmd} after RUN: %files are copied before %post runs")
        dest_abs = _workdir(self.workdir or "/", dest)
        into = (dest.endswith("/") or dest in (".", "./") or len(sources) > 1 or dest_abs in self.dirs
                or any(_has_magic(s) for s in sources))  # fmt: skip
        if ins.from_stage is not None:
            section = self.files_from.setdefault(self.names[ins.from_stage], [])
        else:
            section = self.files
        targets = []
        for source in sources:
            if ins.from_stage is not None:
                path = source if source.startswith("/") else "/" + source
            else:
                path = _clean(source).lstrip("/") or "."
            is_dir = source.endswith("/") or path in (".", "/") or (
                ins.from_stage is None and self.context_dir is not None
                and os.path.isdir(os.path.join(self.context_dir, path))
            )  # fmt: skip
            if _has_magic(source):
                src, dst, target = path, dest_abs.rstrip("/") + "/", dest_abs
            elif is_dir:  # Docker copies a directory's content: `cp -r dir/. dest` does too
                src = path if path in (".", "/") else path.rstrip("/") + "/."
                dst = target = dest_abs
                self.dirs.add(dest_abs)
            else:
                dst = target = posixpath.join(dest_abs, posixpath.basename(path)) if into else dest_abs
                src = path
            section.append(f"{_files_quote(src)} {_files_quote(dst)}")
            targets.append(target)
        if into:
            self.dirs.add(dest_abs)
        for flag, command in (("chown", "chown"), ("chmod", "chmod")):
            if flag in ins.flags:
                self.post += [f"{command} -R {shlex.quote(ins.flags[flag])} {shlex.quote(t)}" for t in targets]


def _files_quote(path: str) -> str:
    """A %files path: double-quoted when it has blanks or quotes (the definition-file parser reads them back)."""
    if not any(c in _WS or c in "\"'" for c in path):
        return path
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _deffile_names(stages: list[Stage]) -> dict[int, str]:
    used = {s.name for s in stages if s.name}
    names: dict[int, str] = {}
    for s in stages:
        if s.name:
            names[s.index] = s.name
            continue
        name = f"stage{s.index}"
        while name in used:
            name += "_"
        used.add(name)
        names[s.index] = name
    return names


def to_deffile(stages: list[Stage], *, context_dir: str | None = None) -> tuple[str, list[str]]:
    """An Apptainer definition file doing what the Dockerfile's stages do, as far as one can, and the warnings.

    Each stage becomes ``Bootstrap: docker`` (``scratch``), ``From:`` and ``Stage:``; RUN becomes a %post line (in
    a subshell, after ``cd`` to the WORKDIR and with ENV and ARG values exported), COPY becomes %files (``%files from
    STAGE`` with --from; sources are relative to the directory the build runs in, so build from the context),
    ENV becomes %environment, LABEL %labels, and ENTRYPOINT/CMD a %runscript with Docker's rule (arguments replace
    CMD). A stage starting from another repeats that stage's instructions. What a definition file cannot express
    (USER, EXPOSE, VOLUME, HEALTHCHECK, ADD of URLs and archives, ...) becomes a ``# not converted`` comment and a
    warning. With ``context_dir`` a COPY source that is a directory is told from a file (else only ``dir/`` is).
    """
    names = _deffile_names(stages)
    warnings: list[str] = []
    blocks = [_DefStage(stage, stages, names, context_dir, warnings).render() for stage in stages]
    return "\n".join(blocks), warnings
