"""``yurt instance start|list|stop`` (joining one, ``yurt exec instance://NAME``, is in :mod:`yurt.cli.actions`)."""

from __future__ import annotations

import os

from yurt.cli.options import Flag, parse, parse_command, usage
from yurt.errors import UsageError

_HELP = Flag("help", short="h", help="show this help")
# Apptainer's -u/--user (another user's instances: root only there); yurt's are per user, so it may name
# only yourself.
_USER = Flag("user", "value", "u", "whose instances: only your own name is accepted", "USER", hidden=True)
LIST_FLAGS = [Flag("json", short="j", help="print JSON"),
              Flag("logs", short="l", help="show where each instance logs"),
              Flag("all", short="a", help="accepted: every instance you may see is listed"), _USER, _HELP]
STOP_FLAGS = [
    Flag("all", short="a", help="stop every instance"),
    Flag("signal", "value", "s", "signal to send first (default TERM)", "SIG"),
    Flag("timeout", "int", "t", "seconds to wait before SIGKILL (default 10)", "SECONDS", bounds=(0, 86400)),
    Flag("force", short="F", help="send SIGKILL at once"),
    _USER,
    _HELP,
]
FLAGS = [LIST_FLAGS[0], *STOP_FLAGS]  # start takes the options of exec (yurt.cli.actions.FLAGS)
START_ONLY = [Flag("pid-file", "value", None, "write the instance's PID to this file", "FILE")]

TOP_USAGE = """Usage: yurt instance start|list|stop [options]

Named containers running in the background (services such as Jupyter or a database). Each has
its own PID namespace, runs the image's %startscript if it has one, and survives the shell that
started it. Join one with 'yurt exec instance://NAME COMMAND' (also run, shell).

Subcommands:
  start [options] IMAGE NAME [ARGS...]   start instance NAME (ARGS go to the start script)
  run [options] IMAGE NAME [ARGS...]     the same, running the image's runscript instead
  list [--json] [--logs]                 the running instances
  stop [options] NAME... | --all         stop instances

Run 'yurt instance start --help' (or list, stop) for their options."""


def main(command: str, argv: list[str], ctx) -> int:
    if not argv:
        raise UsageError("instance needs a subcommand: start, list or stop", "see 'yurt help instance'")
    sub, rest = argv[0], argv[1:]
    if sub in ("-h", "--help", "help"):
        print(TOP_USAGE)
        return 0
    if sub in ("start", "run"):
        return start(rest, ctx, sub)
    if sub in ("list", "ls"):
        return list_(rest, ctx)
    if sub == "stop":
        return stop(rest)
    if sub == "stats":
        raise UsageError("instance stats is not supported by yurt", "see the instance's cgroup, or run top in it: "
                         "yurt exec instance://NAME top")
    raise UsageError(f"unknown instance subcommand {sub!r}", "use start, run, list or stop")


def start_flags() -> list[Flag]:
    from yurt.cli.actions import FLAGS

    return [f for f in FLAGS if f.name not in ("shell", "sharens", "sharens-tag", "no-init", "help")] + \
        [*START_ONLY, _HELP]


def start(argv: list[str], ctx, sub: str = "start") -> int:
    from yurt.cli.actions import JOIN_OPTIONS, _rootfs_for, plan_from

    what = "%startscript" if sub == "start" else "runscript (or Entrypoint + Cmd)"
    parsed = parse_command(f"instance {sub}", argv, start_flags(), "[options] IMAGE NAME [ARGS...]",
                           f"Start a named container in the background, running the image's {what}.",
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
    if values.get("no_pid"):
        raise UsageError("an instance always has its own PID namespace", "leave out --no-pid")
    payload = [instances.STARTSCRIPT, *args] if sub == "start" else args
    spec, image = plan_from("exec" if sub == "start" else "run", values, [image_ref, *payload], ctx)
    spec.annotations["yurt.action"] = "instance"
    doc = instances.start(spec, lambda: _rootfs_for(image, values["unsquash"], ctx.debug), name, image.path,
                          {k: values.get(k) for k in JOIN_OPTIONS}, image_ref=image_ref)
    if values["pid_file"]:
        _write_pid(values["pid_file"], doc["pid"])
    if not ctx.quiet:
        print(f"instance {name} started (pid {doc['pid']}); logs: {doc['stdout']}, {doc['stderr']}")
    return 0


def _write_pid(path: str, pid: int) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(f"{pid}\n")
        os.replace(tmp, path)
    except OSError as e:
        raise UsageError(f"cannot write --pid-file {path}: {e.strerror} (the instance runs)")
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _check_user(values: dict) -> None:
    """``-u USER``: yurt's instances are each user's own; naming yourself is all that can work."""
    import pwd

    user = values.get("user")
    if user and user not in (pwd.getpwuid(os.getuid()).pw_name, str(os.getuid())):
        raise UsageError(f"--user {user}: yurt shows and stops only your own instances")


def list_(argv: list[str], ctx=None) -> int:
    values, positionals = parse(argv, LIST_FLAGS, stop_at_positional=False)
    if values["help"]:
        print(usage("instance list", "[--json] [NAME...]", "Show the running instances.", LIST_FLAGS))
        return 0
    _check_user(values)
    if values["json"] and values["logs"]:
        raise UsageError("instance list takes --json or --logs, not both")
    from yurt.runtime import instances

    rows = [d for d in instances.listing() if not positionals or d.get("name") in positionals]
    if values["json"] and getattr(ctx, "apptainer", False):
        import json

        # Apptainer's layout (internal/app/apptainer/instance_linux.go): spython and Nextflow read it.
        print(json.dumps({"instances": [{"instance": d.get("name"), "pid": d.get("pid"), "img": d.get("image"),
                                         "ip": "", "logErrPath": d.get("stderr"), "logOutPath": d.get("stdout")}
                                        for d in rows]}, indent="\t"))
        return 0
    if values["json"]:
        import json

        keys = ("name", "pid", "image", "started", "stdout", "stderr", "cgroups")
        print(json.dumps({"instances": [{k: d.get(k) for k in keys} for d in rows]}, indent=1))
        return 0
    if values["logs"]:
        table = [("INSTANCE NAME", "PID", "LOGS")]
        for d in rows:
            table += [(str(d.get("name")), str(d.get("pid")), str(d.get("stderr"))), ("", "", str(d.get("stdout")))]
        widths = [max(len(r[i]) for r in table) for i in range(2)]
        for r in table:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[2])
        return 0
    third = ("IP", lambda d: "") if getattr(ctx, "apptainer", False) else ("STARTED", lambda d: str(d.get("started")))
    table = [("INSTANCE NAME", "PID", third[0], "IMAGE")]  # Apptainer's columns under its names
    table += [(str(d.get("name")), str(d.get("pid")), third[1](d), str(d.get("image"))) for d in rows]
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
    _check_user(values)
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
