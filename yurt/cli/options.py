"""Declarative flags, each also settable as a ``YURT_<FLAG>`` environment variable.

Why a hand-written parser and not argparse or click: start-up.  ``yurt exec``
runs once per MPI rank, so every millisecond of import is paid thousands of
times per job.  Measured with ``python -I -X importtime`` (Debian 12's
Python 3.11, best of 21 runs, cumulative): ``import argparse`` 9.2 ms (it
brings ``re``, ``gettext``, ``enum``, ``functools`` and ``warnings``, none of
which the exec path otherwise loads), ``import click`` 37.6 ms, this module
1.3 ms including ``yurt``, ``yurt.cli`` and ``yurt.errors``.  Keep it: the
commands that are not on the exec path may use libraries freely (``rich`` for
progress and tables), the parser may not.

Each :class:`Flag` lists its spellings, kind and help, so usage text, the
environment binding and shell completion (:mod:`yurt.cli.completion`) come from
the same table (as Apptainer's ``cmdline.Flag`` does).  Action commands stop at
the first positional argument (the image): everything after it belongs to the
payload.
"""

from __future__ import annotations

import os

from yurt.config import ENV_PREFIXES, bool_text, env_lookup
from yurt.errors import UsageError

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")


class Flag:
    """One option: ``kind`` is bool, value, list (repeatable) or int.

    Its variables are ``YURT_<NAME>`` and ``YURT_<KEY>`` for each of ``env`` (more keys, as Apptainer's
    ``EnvKeys``: ``bind`` has ``BINDPATH``), then the same with ``APPTAINER_`` and ``SINGULARITY_``
    (:func:`yurt.config.env_lookup`); ``own_env=False`` leaves out ``<NAME>`` (``pull --name``: ``YURT_NAME``
    is set inside every container).  A ``hidden`` flag works but is left out of the usage text (Apptainer's
    options that yurt refuses, and spellings kept for old scripts).

    With ``unset_none`` the value is None when neither the flag nor its variable is given, so a
    config file's default (:mod:`yurt.config`) can apply; ``--flag=false`` still says no.  An int
    flag must have ``bounds`` (lowest, highest): a number out of them is a usage error, here, for
    the flag and its variable alike, not a surprise deep in a mount or a cgroup write.
    ``choices`` are the values shell completion offers (the command itself checks the value).
    """

    __slots__ = ("name", "kind", "short", "help", "metavar", "aliases", "env", "unset_none", "bounds", "choices",
                 "own_env", "hidden")

    def __init__(self, name: str, kind: str = "bool", short: str | None = None, help: str = "",
                 metavar: str = "VALUE", aliases: tuple[str, ...] = (), env: tuple[str, ...] = (),
                 unset_none: bool = False, bounds: tuple[int, int] | None = None,
                 choices: tuple[str, ...] = (), own_env: bool = True, hidden: bool = False) -> None:
        if (kind == "int") != (bounds is not None):
            raise ValueError(f"--{name}: an int flag needs bounds, and only an int flag has them")
        self.name, self.kind, self.short, self.help = name, kind, short, help
        self.metavar, self.aliases, self.env = metavar, aliases, env
        self.unset_none = unset_none
        self.bounds = bounds
        self.choices = choices
        self.own_env, self.hidden = own_env, hidden

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    def env_keys(self) -> tuple[str, ...]:
        if self.name == "help":  # YURT_HELP=1 in a job script must not turn every command into its usage
            return ()
        return ((self.name.replace("-", "_").upper(),) if self.own_env else ()) + self.env

    def env_names(self) -> tuple[str, ...]:
        """Every variable that sets this flag, the one that wins first."""
        return tuple(p + k for p in ENV_PREFIXES for k in self.env_keys())

    def default(self) -> object:
        if self.unset_none:
            return None
        return {"bool": False, "list": [], "int": None, "value": None}[self.kind]


# On every command that may reach a registry: exec/run/shell/test and instance start (docker://...), pull,
# push, build.  Apptainer's spellings of --insecure are --no-https and --nohttps.
REGISTRY_FLAGS = [
    Flag("insecure", help="plain HTTP or unverified TLS for the registry", aliases=("no-https", "nohttps"),
         env=("NOHTTPS", "NO_HTTPS")),
    Flag("authfile", "value", None, "registry credentials file (docker/podman auth.json)", "FILE"),
]


def parse(argv: list[str], flags: list[Flag], *, stop_at_positional: bool,
          environ: dict[str, str] | None = None) -> tuple[dict[str, object], list[str]]:
    """Return ``(values, positionals)``; values keyed by ``Flag.dest``."""
    by_long: dict[str, Flag] = {}
    by_short: dict[str, Flag] = {}
    for f in flags:
        by_long[f.name] = f
        for a in f.aliases:
            by_long[a] = f
        if f.short:
            by_short[f.short] = f
    values: dict[str, object] = {}
    positionals: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            positionals.extend(argv[i:])
            break
        if arg.startswith("--") and len(arg) > 2:
            name, eq, inline = arg[2:].partition("=")
            flag = by_long.get(name)
            if flag is None:
                raise UsageError(f"unknown option --{name}", "see 'yurt help COMMAND'")
            i = _take(flag, inline if eq else None, argv, i, values, f"--{name}")
        elif arg.startswith("-") and len(arg) > 1 and not _is_number(arg):
            j = 1
            while j < len(arg):
                flag = by_short.get(arg[j])
                if flag is None:
                    raise UsageError(f"unknown option -{arg[j]}", "see 'yurt help COMMAND'")
                if flag.kind == "bool":
                    values[flag.dest] = True
                    j += 1
                    continue
                rest = arg[j + 1:]
                i = _take(flag, rest if rest else None, argv, i, values, f"-{arg[j]}")
                break
        else:
            positionals.append(arg)
            if stop_at_positional:
                positionals.extend(argv[i:])
                break
    _from_environment(flags, values, os.environ if environ is None else environ)
    for f in flags:
        values.setdefault(f.dest, f.default())
    return values, positionals


def _is_number(arg: str) -> bool:
    """``-5``, ``-0.5``, ``-1e3`` are values; ``-inf`` is three short flags (no flag is a digit)."""
    return arg[1:2].isdigit() or (arg[1:2] == "." and arg[2:3].isdigit())


def _take(flag: Flag, inline: str | None, argv: list[str], i: int, values: dict[str, object], spelled: str) -> int:
    if flag.kind == "bool":
        if inline is None:
            values[flag.dest] = True
        else:
            values[flag.dest] = _boolean(inline, spelled)
        return i
    if inline is None:
        if i >= len(argv):
            raise UsageError(f"option {spelled} needs a value ({flag.metavar})")
        inline = argv[i]
        i += 1
    _store(flag, inline, values, spelled)
    return i


def _store(flag: Flag, raw: str, values: dict[str, object], spelled: str) -> None:
    if flag.kind == "list":
        values.setdefault(flag.dest, [])
        values[flag.dest].append(raw)  # type: ignore[union-attr]
    elif flag.kind == "int":
        values[flag.dest] = _integer(flag, raw, spelled)
    else:
        values[flag.dest] = raw


def _integer(flag: Flag, raw: str, spelled: str) -> int:
    """A whole number in ASCII digits (not ``1_000``, ``٣`` or ``1e3``, which ``int()`` would take or
    half-take), within the flag's bounds."""
    text = raw.strip()
    digits = text[1:] if text[:1] in ("+", "-") else text
    lo, hi = flag.bounds or (0, 0)
    said = f"{spelled} {raw!r}" if spelled.startswith("-") else f"{spelled}={raw!r}"
    if not (digits.isascii() and digits.isdigit()):
        raise UsageError(f"{said}: not a whole number", f"give {lo} to {hi} ({flag.metavar})")
    n = int(text)
    if not lo <= n <= hi:
        raise UsageError(f"{said} is out of range", f"give {lo} to {hi} ({flag.metavar})")
    return n


def _boolean(raw: str, spelled: str) -> bool:
    low = raw.strip().lower()
    if low in TRUE:
        return True
    if low in FALSE:
        return False
    raise UsageError(f"{spelled} expects true or false, got {raw!r}")


def _from_environment(flags: list[Flag], values: dict[str, object], environ) -> None:
    for f in flags:
        if f.dest in values:
            continue
        hit = env_lookup(f.env_keys(), environ, bool_text if f.kind == "bool" else None)
        if hit is None:
            continue
        name, raw = hit
        if f.kind == "bool":
            values[f.dest] = _boolean(raw, name)
        elif f.kind == "list":
            values[f.dest] = [raw]
        else:
            _store(f, raw, values, name)


def usage(command: str, synopsis: str, summary: str, flags: list[Flag]) -> str:
    lines = [f"Usage: yurt {command} {synopsis}", "", summary, "", "Options:"]
    for f in flags:
        if f.hidden:
            continue
        spell = (f"-{f.short}, " if f.short else "    ") + f"--{f.name}"
        if f.kind != "bool":
            spell += f" {f.metavar}"
        lines.append(f"  {spell:<30} {f.help}")
    lines.append("")
    lines.append("Every option can also be set as YURT_<OPTION> in the environment (e.g. YURT_BIND; Apptainer's "
                 "APPTAINER_<OPTION> and SINGULARITY_<OPTION> are read too, YURT_ first).")
    return "\n".join(lines)


def parse_command(command: str, argv: list[str], flags: list[Flag], synopsis: str, summary: str, *,
                  stop_at_positional: bool = False) -> tuple[dict[str, object], list[str]] | None:
    """Parse a command's arguments; with ``--help`` print its usage and return None."""
    values, positionals = parse(argv, flags, stop_at_positional=stop_at_positional)
    if values.get("help"):
        print(usage(command, synopsis, summary, flags))
        return None
    return values, positionals
