"""Dockerfile instruction arguments: exec (JSON) form, ``--flags``, ``K=V`` pairs, ports, durations, platforms, paths.

What the parser (:mod:`yurt.builder.dockerfile`) reads out of the text after an instruction's name, before and
besides the word processing of :mod:`yurt.builder.dockerfile_lexer`, and the automatic ``BUILDPLATFORM``/
``TARGETPLATFORM``... ARGs. The port, duration and path rules are shared with the image config
(:mod:`yurt.builder.dockerfile_config`), the build context and the conversion to a definition file.
Errors are :class:`~yurt.builder.dockerfile_lexer._Fail` (the parser adds ``FILE:LINE:``).
"""

from __future__ import annotations

import json
import platform as _platform
import posixpath
import re
from collections.abc import Mapping

from yurt.builder.dockerfile_lexer import _WS, _Fail

_SPLIT_WS = re.compile(r"[ \t\n\r\f\v]+")
_PORT = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?(?:/([A-Za-z]+))?\Z")
_DURATION_PART = re.compile(r"([0-9]{0,30}(?:\.[0-9]{0,30})?)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1, "us": 10**3, "µs": 10**3, "μs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9,
                   "h": 3600 * 10**9}  # fmt: skip
_ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm/v7",
           "armv6l": "arm/v6", "i386": "386", "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x",
           "riscv64": "riscv64", "loongarch64": "loong64"}  # fmt: skip


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
