"""``yurt inspect IMAGE`` and ``yurt run-help IMAGE``."""

from __future__ import annotations

from yurt.cli.options import Flag, parse, usage
from yurt.errors import UsageError

SECTIONS = ("labels", "environment", "runscript", "deffile", "partitions", "digest", "helpfile")
FLAGS = [
    Flag("labels", short="l", help="show labels"),
    Flag("environment", short="e", help="show the environment scripts"),
    Flag("runscript", short="r", help="show the runscript"),
    Flag("deffile", short="d", help="show the definition file"),
    Flag("partitions", short="p", help="show SIF objects and partitions with sizes"),
    Flag("digest", help="show the image's sha256 digest"),
    Flag("helpfile", short="H", help="show the help text"),
    Flag("json", short="j", help="print JSON"),
    Flag("help", short="h", help="show this help"),
]


def main(command: str, argv: list[str], ctx) -> int:
    values, positionals = parse(argv, FLAGS, stop_at_positional=False)
    synopsis = "[options] IMAGE"
    if values["help"]:
        summary = "Show an image's help text." if command == "run-help" else "Show an image's metadata."
        print(usage(command, synopsis, summary, [] if command == "run-help" else FLAGS))
        return 0
    if len(positionals) != 1:
        raise UsageError(f"{command} needs exactly one image", f"yurt {command} {synopsis}")
    from yurt.image import inspect

    if command == "run-help":
        print(inspect.run_help(positionals[0]).rstrip("\n"))
        return 0
    sections = {s for s in SECTIONS if values[s]}
    info = inspect.inspect_image(positionals[0])
    if not values["json"] and not sections:
        from yurt.cli.terminal import rich_console

        console = rich_console()
        if console is not None:
            from yurt.cli.views import inspect_summary

            inspect_summary(console, info)
            return 0
    print(inspect.format_inspect(info, json_output=values["json"], sections=sections).rstrip("\n"))
    return 0
