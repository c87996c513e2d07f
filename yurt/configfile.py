"""Reading one configuration file of :mod:`yurt.config`: its bytes, as a TOML document.

Apart from :mod:`yurt.config` because ``yurt exec`` (once per MPI rank) needs none of this while
there is no site or user file: the loader imports this module only once a file exists.  It is
also the one place that imports :mod:`tomllib` (about 10 ms), and only for a file that is not
plain ``key = value`` lines (:func:`parse_simple`): the exec-path import contract in
``pyproject.toml`` names this import as its one allowed exception.

Nothing here knows the keys: :func:`yurt.config.load` validates the document.
"""

from __future__ import annotations

import os

from yurt.errors import ConfigError


def check_trusted(path: str) -> None:
    """Site policy the user could edit would be no policy: refuse a user-writable site file."""
    if os.getuid() == 0:
        return
    for p in (path, os.path.dirname(path)):
        if os.access(p, os.W_OK):
            raise ConfigError(f"{p} is writable by you, so it cannot hold site policy",
                              "the administrator must make it writable by root only")


def read_document(path: str, which: str) -> tuple[str, dict]:
    """The text of the ``which`` (site or user) config file at ``path`` and its TOML document."""
    from yurt.readfile import MIB, read_text

    try:  # bounded, UTF-8 without NUL, and no hang on a FIFO named as YURT_SITE_CONFIG
        text = read_text(path, f"the {which} config", MIB, ConfigError)
    except ConfigError as e:
        if which == "site" and e.message.startswith("cannot read"):
            e.hint = "the site file must be readable by every user"
        raise
    doc = parse_simple(text)
    if doc is None:
        import tomllib

        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}")
    return text, doc


# A strict subset of TOML that every file of this flat format is likely to use: ``key = value``
# lines, where a value is a boolean, a decimal integer, a string without escapes, or a one-line
# array of those strings and integers; blank lines and comments.  For that subset the meaning is
# plain, so :func:`parse_simple` reads it without importing tomllib (about 10 ms, paid by every MPI
# rank otherwise); any other line, or a repeated key, sends the whole file to tomllib.
_STR = r'"[^"\\\x00-\x1f\x7f]*"' + r"|'[^'\x00-\x1f\x7f]*'"
_ITEM = rf"(?:{_STR}|0|-?[1-9][0-9]*)"
_VALUE = rf"{_ITEM}|true|false|\[[ \t]*(?:{_ITEM}[ \t]*(?:,[ \t]*{_ITEM}[ \t]*)*,?[ \t]*)?\]"
_COMMENT = r"(?:#[^\x00-\x08\x0a-\x1f\x7f]*)?"
_LINE = rf"[ \t]*(?:([A-Za-z0-9_-]+)[ \t]*=[ \t]*({_VALUE})[ \t]*)?{_COMMENT}"
_compiled: list = []


def parse_simple(text: str) -> dict[str, object] | None:
    """The document, when ``text`` keeps to the simple subset above; None otherwise (use tomllib)."""
    import re

    if not _compiled:
        _compiled.extend((re.compile(_LINE), re.compile(_ITEM)))
    line_re, item_re = _compiled
    doc: dict[str, object] = {}
    for line in text.split("\n"):
        m = line_re.fullmatch(line[:-1] if line.endswith("\r") else line)
        if m is None:
            return None
        key, raw = m.groups()
        if key is None:
            continue
        if key in doc:
            return None  # tomllib names the error
        if raw.startswith("["):
            doc[key] = [_scalar(item) for item in item_re.findall(raw)]
        else:
            doc[key] = _scalar(raw)
    return doc


def _scalar(raw: str) -> object:
    if raw[0] in "\"'":
        return raw[1:-1]
    if raw in ("true", "false"):
        return raw == "true"
    return int(raw)


def where(path: str, text: str, name: str) -> str:
    """``PATH: line N: `` for the line that sets key ``name`` in ``text`` (``PATH: `` when none does)."""
    import re

    esc = re.escape(name)
    pattern = rf"^[ \t]*(?:{esc}|\"{esc}\"|'{esc}')[ \t]*=|^[ \t]*\[+[ \t]*{esc}[ \t]*[\].]"
    m = re.search(pattern, text, re.MULTILINE)
    if m is None:
        return f"{path}: "
    return f"{path}: line {text.count(chr(10), 0, m.start()) + 1}: "
