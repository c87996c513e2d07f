"""``yurt inspect IMAGE`` and ``yurt run-help IMAGE``.

Under Apptainer's names (``apptainer inspect``) the output is Apptainer's: the labels when no section
is chosen, ``--json`` as ``{"data": {"attributes": {...}}, "type": "container"}`` (cwltool reads that
to tell a sandbox from an empty directory), ``--all`` as JSON with every attribute and app.
"""

from __future__ import annotations

from yurt.cli.options import Flag, parse, usage
from yurt.errors import UsageError

SECTIONS = ("labels", "environment", "runscript", "deffile", "partitions", "digest", "helpfile", "startscript",
            "test")
FLAGS = [
    Flag("labels", short="l", help="show labels"),
    Flag("environment", short="e", help="show the environment scripts"),
    Flag("runscript", short="r", help="show the runscript"),
    Flag("startscript", short="s", help="show the start script (instances)"),
    Flag("test", short="t", help="show the test script"),
    Flag("deffile", short="d", help="show the definition file"),
    Flag("partitions", short="p", help="show SIF objects and partitions with sizes"),
    Flag("digest", help="show the image's sha256 digest"),
    Flag("helpfile", short="H", help="show the help text"),
    Flag("list-apps", help="list the SCIF apps"),
    Flag("app", "value", None, "show what is chosen of this SCIF app", "NAME"),
    Flag("all", help="everything, as JSON (apps included)"),
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
    app = values["app"] or None
    apps = bool(app or values["list_apps"] or values["all"])
    if getattr(ctx, "apptainer", False):
        if values["all"]:
            sections, app, values["json"] = {*inspect.APPTAINER_ATTRIBUTES}, None, True
        elif not sections and not values["list_apps"]:
            sections = {"labels"}  # Apptainer's default
        info = inspect.inspect_image(positionals[0], digest=False, apps=apps)
        print(inspect.apptainer_inspect(info, sections, app=app, json_output=values["json"],
                                        list_apps=values["list_apps"]), end="")
        return 0
    info = inspect.inspect_image(positionals[0], apps=apps)
    if values["all"]:
        print(inspect.format_inspect(info, json_output=True, sections=set()).rstrip("\n"))
        return 0
    if values["list_apps"]:
        print("".join(f"{name}\n" for name in sorted(info.get("apps") or {})), end="")
        if not sections:
            return 0
    if app is not None:
        if app not in (info.get("apps") or {}):
            raise UsageError(f"the image has no SCIF app {app!r}", "see 'yurt inspect --list-apps IMAGE'")
        info = {**info, **info["apps"][app]}
    if not values["json"] and not sections:
        from yurt.cli.terminal import rich_console

        console = rich_console()
        if console is not None:
            from yurt.cli.views import inspect_summary

            inspect_summary(console, info)
            return 0
    print(inspect.format_inspect(info, json_output=values["json"], sections=sections).rstrip("\n"))
    return 0
