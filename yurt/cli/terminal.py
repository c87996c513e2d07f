"""Whether a command draws with rich (progress bars, tables, colour) or prints plain lines.

rich draws only on a terminal: a batch job's log or a pipe gets the plain lines
scripts parse, byte for byte as before rich.  ``NO_COLOR`` (https://no-color.org,
any non-empty value) keeps the bars and tables and drops the colour; ``--quiet``
is handled by each command (it prints only errors).  ``TERM=dumb`` is treated as
no terminal.

rich is imported here, lazily, and only from the long interactive commands
(pull, push, build, cache list, inspect): ``yurt exec`` on a local image never
loads it, and the import happens before a container starts, never after the
root switch.
"""

from __future__ import annotations

import os
import sys
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.console import Console


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal that can take escape sequences."""
    try:
        if not stream.isatty():
            return False
    except (AttributeError, ValueError, OSError):  # no isatty, or closed
        return False
    return os.environ.get("TERM", "") != "dumb"


def rich_console(stream: TextIO | None = None) -> Console | None:
    """A rich console writing to ``stream`` (default stdout) when it is a terminal; else None: print plain."""
    stream = sys.stdout if stream is None else stream
    if not is_terminal(stream):
        return None
    from rich.console import Console

    # Image metadata and registry names are hostile text: no markup, emoji codes or highlighting from them.
    return Console(file=stream, no_color=bool(os.environ.get("NO_COLOR")), markup=False, emoji=False,
                   highlight=False)


def done(text: str, stream: TextIO | None = None) -> None:
    """A command's closing ``yurt: ...`` line: the same words everywhere, the prefix coloured on a terminal."""
    stream = sys.stdout if stream is None else stream
    console = rich_console(stream)
    if console is None:
        print(f"yurt: {text}", file=stream)
        return
    from rich.text import Text

    console.print(Text.assemble(("yurt: ", "bold green"), printable(text)), soft_wrap=True)


def status(text: str, quiet: bool = False, stream: TextIO | None = None) -> AbstractContextManager:
    """A spinner with ``text`` on the terminal (stderr) while the block runs; nothing elsewhere or when quiet."""
    stream = sys.stderr if stream is None else stream
    console = None if quiet else rich_console(stream)
    if console is None:
        return nullcontext()
    return console.status(text, spinner="dots")


def printable(text: str) -> str:
    """``text`` with control characters (but newline and tab) shown as ``\\xNN``: hostile metadata cannot
    move the cursor or recolour the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in "\n\t" else f"\\x{ord(c):02x}" if ord(c) < 256
                   else f"\\u{ord(c):04x}" for c in text)
