"""``yurt version`` and ``yurt help``."""

from __future__ import annotations

import importlib


def main(command: str, argv: list[str], ctx) -> int:
    if command == "version":
        from yurt import __version__

        print(f"yurt version {__version__}")
        return 0
    from yurt.cli import COMMANDS

    if argv and argv[0] in COMMANDS and argv[0] != "help":
        module = importlib.import_module(COMMANDS[argv[0]][0])
        return int(module.main(argv[0], ["--help"], ctx) or 0)
    if argv:
        from yurt.errors import UsageError

        raise UsageError(f"unknown command {argv[0]!r}", "see 'yurt help'")
    lines = ["Usage: yurt [--debug] [--quiet] COMMAND [options] ...", "",
             "A rootless, daemonless container runtime for HPC.", "", "Commands:"]
    for name, (_, summary) in COMMANDS.items():
        lines.append(f"  {name:<10} {summary}")
    lines += ["", "Run 'yurt help COMMAND' for a command's options."]
    print("\n".join(lines))
    return 0
