"""Dockerfile words: quotes, escapes and variable substitution, and the shell and Go glob character classes.

Docker's word processing (BuildKit's shell lexer) of one string, with the parser's escape character and the variables
in scope: ``'...'`` and ``"..."`` quotes, the escape character, and ``$V``/``${V...}`` substitution with every modifier
Docker knows (see :mod:`yurt.builder.dockerfile`). The patterns of ``${V#p}``, ``${V%p}`` and ``${V/p/r}`` are shell
globs; their character classes are shared with the Go-style patterns of ``.dockerignore``
(:mod:`yurt.builder.dockerfile_context`).

This is the bottom of the Dockerfile code: text in, words out, nothing about instructions or files, so it can be read
and fuzzed on its own. Errors are :class:`_Fail` (the parser adds ``FILE:LINE:``) and :class:`_BadPattern`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_WS = " \t\n\r\f\v"
_DIGITS = frozenset("0123456789")
_NAME_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_NAME_CHARS = _NAME_START | _DIGITS
_MAX_NESTING = 32


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
