"""``yurt version`` and ``yurt help [COMMAND [SUBCOMMAND]]``."""

from __future__ import annotations

import importlib

from yurt.cli.options import Flag, parse
from yurt.errors import UsageError

FLAGS = [Flag("help", short="h", help="show this help")]
# Commands whose first argument is a subcommand with options of its own (`yurt help cache clean`).
SUBCOMMANDS = {"instance": ("start", "run", "list", "ls", "stop"), "cache": ("list", "ls", "clean"),
               "config": ("show",), "registry": ("login", "logout", "list")}


def main(command: str, argv: list[str], ctx) -> int:
    values, positionals = parse(argv, FLAGS, stop_at_positional=False)
    if command == "version":
        if values["help"]:
            print("Usage: yurt version\n\nShow the yurt version.")
            return 0
        if positionals:
            raise UsageError(f"unexpected argument {positionals[0]!r}", "yurt version takes none")
        if getattr(ctx, "apptainer", False):
            from yurt.cli import APPTAINER_VERSION

            # `apptainer version` prints the bare number, `--version` names the program; under the name
            # singularity too, as Apptainer's own singularity link does (cwltool, Snakemake and spython
            # all take "apptainer version 1.x" for an Apptainer >= 1.1: README, "Using yurt as Apptainer").
            print(f"apptainer version {APPTAINER_VERSION}" if ctx.long_version else APPTAINER_VERSION)
            return 0
        from yurt import __version__

        print(f"yurt version {__version__}")
        return 0
    from yurt.cli import COMMANDS

    if values["help"] or not positionals or positionals == ["help"]:
        lines = ["Usage: yurt [--debug] [--quiet] COMMAND [options] ...", "",
                 "A rootless, daemonless container runtime for HPC.", "", "Commands:"]
        for name, (_, summary) in COMMANDS.items():
            lines.append(f"  {name:<10} {summary}")
        lines += ["", "Run 'yurt help COMMAND' for a command's options."]
        print("\n".join(lines))
        return 0
    name, rest = positionals[0], positionals[1:]
    if name not in COMMANDS or name == "help":  # `help help` was handled above
        raise UsageError(f"unknown command {name!r}", "see 'yurt help'")
    if len(rest) > 1 or (rest and rest[0] not in SUBCOMMANDS.get(name, ())):
        raise UsageError(f"unexpected argument {rest[0]!r}", "yurt help [COMMAND [SUBCOMMAND]]")
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(name, [*rest, "--help"], ctx) or 0)
