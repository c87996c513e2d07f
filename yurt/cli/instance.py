"""``yurt instance start|list|stop`` (joining one, ``yurt exec instance://NAME``, is in :mod:`yurt.cli.actions`)."""

from __future__ import annotations

import os

from yurt.cli.options import Flag, parse, parse_command, usage
from yurt.errors import UsageError

_HELP = Flag("help", short="h", help="show this help")
LIST_FLAGS = [Flag("json", short="j", help="print JSON"), _HELP]
STOP_FLAGS = [
    Flag("all", short="a", help="stop every instance"),
    Flag("signal", "value", "s", "signal to send first (default TERM)", "SIG"),
    Flag("timeout", "int", "t", "seconds to wait before SIGKILL (default 10)", "SECONDS", bounds=(0, 86400)),
    Flag("force", short="F", help="send SIGKILL at once"),
    _HELP,
]
FLAGS = [LIST_FLAGS[0], *STOP_FLAGS]  # start takes the options of exec (yurt.cli.actions.FLAGS)

TOP_USAGE = """Usage: yurt instance start|list|stop [options]

Named containers running in the background (services such as Jupyter or a database). Each has
its own PID namespace, runs the image's %startscript if it has one, and survives the shell that
started it. Join one with 'yurt exec instance://NAME COMMAND' (also run, shell).

Subcommands:
  start [options] IMAGE NAME [ARGS...]   start instance NAME (ARGS go to the start script)
  list [--json]                          the running instances
  stop [options] NAME... | --all         stop instances

Run 'yurt instance start --help' (or list, stop) for their options."""


def main(command: str, argv: list[str], ctx) -> int:
    if not argv:
        raise UsageError("instance needs a subcommand: start, list or stop", "see 'yurt help instance'")
    sub, rest = argv[0], argv[1:]
    if sub in ("-h", "--help", "help"):
        print(TOP_USAGE)
        return 0
    if sub == "start":
        return start(rest, ctx)
    if sub in ("list", "ls"):
        return list_(rest)
    if sub == "stop":
        return stop(rest)
    raise UsageError(f"unknown instance subcommand {sub!r}", "use start, list or stop")


def start(argv: list[str], ctx) -> int:
    from yurt.cli.actions import FLAGS, JOIN_OPTIONS, _rootfs_for, plan_from

    flags = [f for f in FLAGS if f.name not in ("shell", "sharens", "sharens-tag", "no-init")]
    parsed = parse_command("instance start", argv, flags, "[options] IMAGE NAME [ARGS...]",
                           "Start a named container in the background, running the image's %startscript.",
                           stop_at_positional=True)
    if parsed is None:
        return 0
    values, positionals = parsed
    if len(positionals) < 2:
        raise UsageError("instance start needs an image and a name", "yurt instance start IMAGE NAME [ARGS...]")
    from yurt.runtime import instances

    image_ref, name, args = positionals[0], positionals[1], positionals[2:]
    if os.path.exists(image_ref):  # a local image: joins may come from another directory
        image_ref = os.path.abspath(image_ref)
    instances.check_name(name)
    values.update(pid=True, sharens=False, shell=None, no_init=False)
    spec, image = plan_from("exec", values, [image_ref, instances.STARTSCRIPT, *args], ctx)
    spec.annotations["yurt.action"] = "instance"
    doc = instances.start(spec, lambda: _rootfs_for(image, values["unsquash"], ctx.debug), name, image.path,
                          {k: values.get(k) for k in JOIN_OPTIONS}, image_ref=image_ref)
    if not ctx.quiet:
        print(f"instance {name} started (pid {doc['pid']}); logs: {doc['stdout']}, {doc['stderr']}")
    return 0


def list_(argv: list[str]) -> int:
    values, positionals = parse(argv, LIST_FLAGS, stop_at_positional=False)
    if values["help"]:
        print(usage("instance list", "[--json] [NAME...]", "Show the running instances.", LIST_FLAGS))
        return 0
    from yurt.runtime import instances

    rows = [d for d in instances.listing() if not positionals or d.get("name") in positionals]
    if values["json"]:
        import json

        keys = ("name", "pid", "image", "started", "stdout", "stderr", "cgroups")
        print(json.dumps({"instances": [{k: d.get(k) for k in keys} for d in rows]}, indent=1))
        return 0
    table = [("INSTANCE NAME", "PID", "STARTED", "IMAGE")]
    table += [(str(d.get("name")), str(d.get("pid")), str(d.get("started")), str(d.get("image"))) for d in rows]
    widths = [max(len(r[i]) for r in table) for i in range(3)]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[3])
    return 0


def _signal_number(raw: str) -> int:
    import signal

    text = raw.strip().upper()
    if text.isascii() and text.isdigit():
        if int(text) not in signal.valid_signals():
            raise UsageError(f"unknown signal {raw!r}", "use a name such as TERM, INT, KILL or a number from 1 to 64")
        return int(text)
    try:
        return int(signal.Signals[text if text.startswith("SIG") else "SIG" + text])
    except KeyError:
        raise UsageError(f"unknown signal {raw!r}", "use a name such as TERM, INT, KILL or a number")


def stop(argv: list[str]) -> int:
    values, names = parse(argv, STOP_FLAGS, stop_at_positional=False)
    if values["help"]:
        print(usage("instance stop", "[options] NAME... | --all", "Stop instances.", STOP_FLAGS))
        return 0
    from yurt.runtime import instances

    if values["all"] and names:
        raise UsageError("instance stop takes names or --all, not both", "yurt instance stop [options] NAME... | --all")
    if values["all"]:
        names = [str(d["name"]) for d in instances.listing()]
    elif not names:
        raise UsageError("instance stop needs a name or --all", "see 'yurt instance list'")
    # checked even with --force: a typo is still one
    signum = _signal_number(values["signal"] or "TERM")
    if values["force"]:
        signum = 9
    timeout = 10 if values["timeout"] is None else values["timeout"]
    missing = []
    for name in names:
        instances.check_name(name)
        if instances.stop(name, signum, timeout):
            print(f"instance {name} stopped")
        else:
            missing.append(name)
    if missing:
        raise UsageError(f"no instance named {', '.join(missing)} is running", "see 'yurt instance list'")
    return 0
