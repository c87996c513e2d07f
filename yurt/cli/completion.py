"""``yurt completion bash|zsh|fish``: a shell completion script, generated from the commands' flag tables.

Nothing here is written by hand per flag: the commands come from
:data:`yurt.cli.COMMANDS`, each command's options from its ``FLAGS`` table (the
same :class:`~yurt.cli.options.Flag` objects the parser and ``--help`` use),
subcommands from the tables of the commands that have them.  A flag's value is
completed from its ``choices`` (``--mpi``, ``--compression``), as a file or a
directory when its metavar says so (``FILE``, ``DIR``), and not at all
otherwise.  A new flag in a table is therefore completed without touching this
module; a new *subcommand* is added to :func:`contexts`.

The scripts are static: completing runs no yurt (``yurt exec`` start-up stays
out of every keystroke).  ``make install`` puts them into the system's
completion directories when it has them.
"""

from __future__ import annotations

import importlib

from yurt.cli.completion_scripts import Context, render
from yurt.cli.options import Flag, parse_command
from yurt.errors import UsageError

SHELLS = ("bash", "zsh", "fish")
FLAGS = [Flag("help", short="h", help="show this help")]
SYNOPSIS = ("bash|zsh|fish",
            "Print a completion script for the shell.  Enable it for this session with\n"
            "  bash: source <(yurt completion bash)\n"
            "  zsh:  source <(yurt completion zsh)   (after compinit)\n"
            "  fish: yurt completion fish | source\n"
            "or install it where the shell looks for completions (`make install` does, as root).")

# The global options yurt.cli.main reads before the command (they have no table: that loop is on the exec path).
GLOBAL_FLAGS = [
    Flag("debug", short="d", help="print tracebacks and debug messages"),
    Flag("quiet", short="q", help="print only errors"),
    Flag("silent", short="s", help="same as --quiet"),
    Flag("verbose", short="v", help="accepted (Apptainer's): yurt prints its notices anyway"),
    Flag("nocolor", help="no colour (as NO_COLOR=1)"),
    Flag("help", short="h", help="show help"),
    Flag("version", short="V", help="show the version"),
]
def contexts() -> tuple[dict[str, str], dict[str, Context]]:
    """``(commands, contexts)``: command -> summary, and ``""`` (before the command), each command and each
    ``"command subcommand"`` -> its :class:`Context`."""
    from yurt.cli import COMMANDS, actions, cache, config, instance, registry
    from yurt.hpc import srun

    commands = {name: summary for name, (_, summary) in COMMANDS.items()}
    out: dict[str, Context] = {"": Context(GLOBAL_FLAGS, "commands")}
    for name, (module_name, _) in COMMANDS.items():
        flags = getattr(importlib.import_module(module_name), "FLAGS", None) or FLAGS
        out[name] = Context(flags)
    help_only = FLAGS
    for name in ("exec", "run", "shell", "test"):
        out[name] = Context(actions.FLAGS, stop=True)
    # srun: its own options (yurt.hpc.srun) and the long options of yurt exec that srun does not own
    metavars = {"image": "IMG", "mounts": "SPEC", "yurt": "CMD"}
    own = [Flag(n, "value", metavar=metavars.get(n, "VALUE")) for n in srun.OWN_VALUE]
    own += [Flag(n) for n in srun.OWN_BOOL]
    out["srun"] = Context(own + [Flag(f.name, f.kind, None, f.help, f.metavar, f.aliases, bounds=f.bounds,
                                      choices=f.choices)
                                 for f in actions.FLAGS if f.name not in srun.SRUN_OWNED] + FLAGS)
    out["run-help"] = Context(help_only)
    out["help"] = Context([], "commands")
    out["version"] = Context([], "none")
    out["completion"] = Context(FLAGS, "shells")
    # Subcommands, each with the table its parser uses.
    instance_start = instance.start_flags()
    subcommands = {
        "instance": ({"start": "Start a named instance of an image", "run": "Start one running its runscript",
                      "list": "Show the running instances", "stop": "Stop instances"},
                     help_only, {"start": Context(instance_start, stop=True), "run": Context(instance_start, stop=True),
                                 "list": Context(instance.LIST_FLAGS, "none"),
                                 "stop": Context(instance.STOP_FLAGS, "none")}),
        "cache": ({"list": "Show cached entries", "clean": "Remove cached entries"},
                  help_only, {"list": Context(cache.LIST_FLAGS, "none"), "clean": Context(cache.CLEAN_FLAGS, "none")}),
        "registry": ({"login": "Store credentials for a registry", "logout": "Remove a registry's credentials",
                      "list": "List the registries with stored credentials"},
                     registry.FLAGS, {sub: Context(registry.FLAGS, "none") for sub in ("login", "logout", "list")}),
        "config": ({"show": "Show the effective configuration"}, help_only, {"show": Context(config.FLAGS, "none")}),
    }
    for name, (summaries, flags, subs) in subcommands.items():
        out[name] = Context(flags, "none", subcommands=summaries)
        for sub, ctx in subs.items():
            out[f"{name} {sub}"] = ctx
    return commands, out


def main(command: str, argv: list[str], ctx) -> int:
    parsed = parse_command(command, argv, FLAGS, *SYNOPSIS)
    if parsed is None:
        return 0
    _, positionals = parsed
    if len(positionals) != 1 or positionals[0] not in SHELLS:
        raise UsageError("completion needs one shell: bash, zsh or fish", "yurt completion bash")
    print(render(positionals[0], *contexts()), end="")
    return 0
