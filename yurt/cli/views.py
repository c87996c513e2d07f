"""The terminal views of ``yurt cache list`` and ``yurt inspect``: rich tables and colour.

Used only when :func:`yurt.cli.terminal.rich_console` gives a console (stdout is
a terminal); the commands print their plain text otherwise, which stays what
scripts parse.  Same facts as the plain text, laid out as tables.  Everything
shown comes from the cache or the image, so it goes in as rich ``Text`` (never
markup) and through :func:`~yurt.cli.terminal.printable`.
"""

from __future__ import annotations

import time
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from yurt.cli.terminal import printable

_HEAD = "bold cyan"
_TITLE = "bold"


def _t(value: object, style: str = "") -> Text:
    return Text(printable(str(value)), style=style)


def cache_list(console: Console, entries: list, refs: dict[str, list[str]], rows: list[tuple[str, int, int]],
               empty: str, store: Any, human_size: Any, human_age: Any) -> None:
    """The entries, the totals per type, and where the caches are."""
    if entries:
        table = Table(box=box.SIMPLE_HEAD, header_style=_HEAD, show_edge=False, pad_edge=False)
        table.add_column("TYPE")
        table.add_column("SIZE", justify="right")
        table.add_column("LAST USED")
        table.add_column("NAME", overflow="fold")
        now = time.time()
        for e in entries:
            name = _t(e.name)
            if e.kind == "sif" and e.name in refs:
                name.append(f"  ({printable(', '.join(refs[e.name]))})", style="green")
            table.add_row(_t(e.kind), _t(human_size(e.size)), _t(human_age(now - e.used), "dim"), name)
        console.print(table)
    else:
        console.print(_t(empty))
    console.print()
    totals = Table(box=box.SIMPLE_HEAD, header_style=_HEAD, show_edge=False, pad_edge=False)
    totals.add_column("TYPE")
    totals.add_column("ENTRIES", justify="right")
    totals.add_column("SIZE", justify="right")
    for label, count, size in rows:
        style = "bold" if label == "total" else ""
        totals.add_row(_t(label, style), _t(count, style), _t(human_size(size), style))
    console.print(totals)
    console.print()
    console.print(Text.assemble(("cache: ", "dim"), printable(str(store.root))), soft_wrap=True)
    console.print(Text.assemble(("node-local cache: ", "dim"), printable(str(store.local_root))), soft_wrap=True)


def _when(ts: int) -> str:
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
    except (OverflowError, OSError, ValueError):
        return str(ts)


def _block(console: Console, title: str, body: str) -> None:
    console.print()
    console.print(_t(title, _TITLE))
    console.print(_t(body.rstrip("\n")), soft_wrap=True)


def _table(*columns: str, right: tuple[str, ...] = ()) -> Table:
    table = Table(box=box.SIMPLE_HEAD, header_style=_HEAD, show_edge=False, pad_edge=False)
    for c in columns:
        table.add_column(c, justify="right" if c in right else "left", overflow="fold")
    return table


def inspect_summary(console: Console, info: dict[str, Any]) -> None:
    """``yurt inspect IMAGE`` without sections or --json: what the plain summary shows, as tables."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style=_HEAD)
    grid.add_column(overflow="fold")
    grid.add_row("Image", _t(f"{info['path']} ({info['format']}, {info.get('size', 0)} bytes)"))
    if info.get("digest"):
        grid.add_row("Digest", _t(info["digest"]))
    header = info.get("header")
    if header:
        grid.add_row("Arch", _t(header["arch"]))
        grid.add_row("ID", _t(header["id"]))
        grid.add_row("Created", _t(_when(header["created"])))
    console.print(grid)
    if info.get("labels"):
        console.print()
        table = _table("LABEL", "VALUE")
        for key, value in sorted(info["labels"].items()):
            table.add_row(_t(key), _t(value))
        console.print(_t("Labels", _TITLE))
        console.print(table)
    if info.get("partitions"):
        console.print()
        table = _table("ID", "FS", "TYPE", "ARCH", "SIZE", right=("ID", "SIZE"))
        for p in info["partitions"]:
            table.add_row(*(_t(p[k]) for k in ("id", "fs", "type", "arch", "size")))
        console.print(_t("Partitions", _TITLE))
        console.print(table)
    for name, content in (info.get("environment") or {}).items():
        _block(console, f"Environment: {name}", content)
    for title, section in (("Runscript", "runscript"), ("Help", "helpfile"), ("Definition file", "deffile")):
        if info.get(section):
            _block(console, title, info[section])
    if info.get("objects"):
        console.print()
        table = _table("ID", "TYPE", "NAME", "SIZE", right=("ID", "SIZE"))
        for o in info["objects"]:
            table.add_row(_t(o["id"]), _t(o["type"]), _t(o["name"] or "-"), _t(o["size"]))
        console.print(_t("Objects", _TITLE))
        console.print(table)
    for w in info.get("warnings", []):
        console.print()
        console.print(Text.assemble(("Warning: ", "bold yellow"), printable(str(w))), soft_wrap=True)
