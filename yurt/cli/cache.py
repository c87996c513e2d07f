"""``yurt cache list`` and ``yurt cache clean``: what yurt keeps on disk, and removing it."""

from __future__ import annotations

import sys
import time

from yurt.cli.options import Flag, parse, usage
from yurt.errors import UsageError

TYPES = ("blob", "sif", "unpacked", "ref", "build")
_TYPE = Flag("type", kind="value", short="T", metavar="TYPE",
             help="only these entries: blob, sif, unpacked, ref, build or all (comma-separated)",
             choices=(*TYPES, "all"))
_HELP = Flag("help", short="h", help="show this help")
LIST_FLAGS = [_TYPE, Flag("json", short="j", help="print JSON"), _HELP]
CLEAN_FLAGS = [
    _TYPE,
    Flag("days", kind="int", short="D", metavar="N", help="only entries not used for N days", bounds=(0, 100000)),
    Flag("dry-run", short="n", help="show what would be removed, remove nothing"),
    Flag("force", short="f", help="do not ask for confirmation"),
    _HELP,
]
FLAGS = [_TYPE, LIST_FLAGS[1], *CLEAN_FLAGS[1:]]

SUMMARY = ("Manage yurt's caches: downloaded blobs, converted SIFs, resolved references and build steps in\n"
           "$YURT_CACHEDIR (~/.cache/yurt), and images unpacked on this node in $YURT_LOCAL_CACHEDIR\n"
           "(/var/tmp/yurt-<uid>).")
TOP_USAGE = f"""Usage: yurt cache list|clean [options]

{SUMMARY}

Subcommands:
  list    Show cached entries with their size and when they were last used
  clean   Remove cached entries (asks first unless --force)

Run 'yurt cache list --help' or 'yurt cache clean --help' for their options."""


def main(command: str, argv: list[str], ctx) -> int:
    if not argv:
        raise UsageError("cache needs a subcommand: list or clean", "see 'yurt help cache'")
    sub, rest = argv[0], argv[1:]
    if sub in ("-h", "--help", "help"):
        print(TOP_USAGE)
        return 0
    if sub in ("list", "ls"):
        return cache_list(rest, ctx)
    if sub == "clean":
        return cache_clean(rest, ctx)
    raise UsageError(f"unknown cache subcommand {sub!r}", "use 'yurt cache list' or 'yurt cache clean'")


def _types(raw: object) -> list[str]:
    if raw is None:
        return list(TYPES)
    chosen: list[str] = []
    for word in str(raw).replace(" ", "").split(","):
        if word == "all":
            return list(TYPES)
        if word not in TYPES:
            raise UsageError(f"unknown cache type {word!r}", "one of " + ", ".join(TYPES) + " or all")
        if word not in chosen:
            chosen.append(word)
    if not chosen:
        raise UsageError("--type needs a value", "one of " + ", ".join(TYPES) + " or all")
    return chosen


def cache_list(argv: list[str], ctx) -> int:
    values, positionals = parse(argv, LIST_FLAGS, stop_at_positional=False)
    if values["help"]:
        print(usage("cache list", "[--type TYPE] [--json]", "List what yurt keeps in its caches.", LIST_FLAGS))
        return 0
    if positionals:
        raise UsageError(f"unexpected argument {positionals[0]!r}", "yurt cache list [--type TYPE] [--json]")
    kinds = _types(values["type"])
    from yurt.store.cache import Store

    store = Store()
    entries = [e for kind in kinds for e in store.entries(kind)]
    totals = {kind: {"count": 0, "size": 0} for kind in kinds}
    for e in entries:
        totals[e.kind]["count"] += 1
        totals[e.kind]["size"] += e.size
    if values["json"]:
        import json

        print(json.dumps({"cache_dir": str(store.root), "local_cache_dir": str(store.local_root),
                          "entries": [e.to_dict() for e in entries], "totals": totals}, indent=2))
        return 0
    refs: dict[str, list[str]] = {}
    for e in entries:
        if e.kind == "ref" and " -> " in e.name:
            reference, digest = e.name.rsplit(" -> ", 1)
            refs.setdefault(digest, []).append(reference)
    rows = [(kind, totals[kind]["count"], totals[kind]["size"]) for kind in kinds]
    if len(kinds) > 1:
        rows.append(("total", len(entries), sum(e.size for e in entries)))
    empty = "No cached entries" + ("" if len(kinds) == len(TYPES) else " of type " + ", ".join(kinds)) + "."
    from yurt.cli.terminal import rich_console

    console = rich_console()
    if console is not None:
        from yurt.cli.views import cache_list as draw

        draw(console, entries, refs, rows, empty, store, human_size, human_age)
        return 0
    now = time.time()
    lines = []
    if entries:
        lines.append(f"{'TYPE':<9} {'SIZE':>10}  {'LAST USED':<10} NAME")
        for e in entries:
            name = e.name + (f"  ({', '.join(refs[e.name])})" if e.kind == "sif" and e.name in refs else "")
            lines.append(f"{e.kind:<9} {human_size(e.size):>10}  {human_age(now - e.used):<10} {name}")
        lines.append("")
    else:
        lines += [empty, ""]
    for label, count, size in rows:
        lines.append(f"{label:<9} {count:>5} {_entries(count):<8} {human_size(size):>10}")
    lines += ["", f"cache: {store.root}", f"node-local cache: {store.local_root}"]
    print("\n".join(lines))
    return 0


def cache_clean(argv: list[str], ctx) -> int:
    values, positionals = parse(argv, CLEAN_FLAGS, stop_at_positional=False)
    synopsis = "[--type TYPE] [--days N] [--dry-run] [--force]"
    if values["help"]:
        print(usage("cache clean", synopsis,
                    "Remove cached entries, and anything left behind by interrupted downloads or unpacks.\n"
                    "Entries that another yurt is using are kept.", CLEAN_FLAGS))
        return 0
    if positionals:
        raise UsageError(f"unexpected argument {positionals[0]!r}", f"yurt cache clean {synopsis}")
    kinds = _types(values["type"])
    days = values["days"]  # bounds checked by the parser
    dry_run, force = bool(values["dry_run"]), bool(values["force"])
    if not (dry_run or force or sys.stdin.isatty()):
        raise UsageError("refusing to clean the cache without confirmation: stdin is not a terminal",
                         "pass --force")
    from yurt.store.cache import Store

    store = Store()

    def run(dry: bool) -> tuple[list, list]:
        removed: list = []
        skipped: list = []
        seen: set[str] = set()
        for kind in [None] if len(kinds) == len(TYPES) else kinds:
            for e in store.clean(kind, older_than_days=days, dry_run=dry, skipped=skipped):  # type: ignore[arg-type]
                if str(e.path) not in seen:
                    seen.add(str(e.path))
                    removed.append(e)
        return removed, skipped

    if dry_run or not force:
        planned, skipped = run(True)
        if not planned:
            _out(ctx, "nothing to clean" + _kept(skipped))
            return 0
        verb = "would remove" if dry_run else "will remove"
        for e in planned:
            _out(ctx, f"{verb} {e.kind} {e.name} ({human_size(e.size)})", always=dry_run)
        total = human_size(sum(e.size for e in planned))
        if dry_run:
            _out(ctx, f"would free {total} ({len(planned)} {_entries(len(planned))}){_kept(skipped)}", always=True)
            return 0
        sys.stderr.write(f"Remove {len(planned)} {_entries(len(planned))} ({total}) from the cache? [y/N] ")
        sys.stderr.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            sys.stderr.write("nothing removed\n")
            return 0
    removed, skipped = run(False)
    for e in removed:
        _out(ctx, f"removed {e.kind} {e.name} ({human_size(e.size)})")
    if removed:
        _out(ctx, f"freed {human_size(sum(e.size for e in removed))} ({len(removed)} {_entries(len(removed))})"
             + _kept(skipped))
    else:
        _out(ctx, "nothing to clean" + _kept(skipped))
    return 0


def _entries(n: int) -> str:
    return "entry" if n == 1 else "entries"


def _kept(skipped: list) -> str:
    return f"; kept {len(skipped)} {_entries(len(skipped))} in use by another yurt" if skipped else ""


def _out(ctx, text: str, always: bool = False) -> None:
    """Progress lines: ``--quiet`` drops them, except what a dry run is asked to show."""
    if always or not getattr(ctx, "quiet", False):
        print(text)


def human_size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def human_age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return "just now"
    for size, unit in ((86400 * 365, "y"), (86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    raise AssertionError("unreachable")
