"""``yurt`` command line: global options, then a command, each in its own module.

Command modules are imported only when their command runs, so ``yurt exec``
pays for nothing else.  User errors print one ``yurt: error:`` line and exit
non-zero; a traceback appears only with ``--debug``.
"""

from __future__ import annotations

import os
import sys

# name -> (module, summary).  Each module has ``main(argv, ctx) -> int`` and ``FLAGS``.
COMMANDS: dict[str, tuple[str, str]] = {
    "exec": ("yurt.cli.actions", "Run a command inside a container"),
    "run": ("yurt.cli.actions", "Run the image's runscript (or Entrypoint + Cmd)"),
    "shell": ("yurt.cli.actions", "Start an interactive shell inside a container"),
    "test": ("yurt.cli.actions", "Run the image's test script (%test)"),
    "instance": ("yurt.cli.instance", "Start, list or stop named background containers (instances)"),
    "srun": ("yurt.cli.srun", "Run each task of a Slurm job step in a container (srun + yurt exec)"),
    "build": ("yurt.cli.build", "Build a SIF or sandbox image from a definition file or a directory"),
    "pull": ("yurt.cli.pull", "Pull an image from a registry or OCI layout into a SIF"),
    "push": ("yurt.cli.push", "Push a SIF or directory to a registry (oras:// or docker://)"),
    "registry": ("yurt.cli.registry", "Log in to, log out of, or list OCI registries"),
    "cache": ("yurt.cli.cache", "List or clean the image caches"),
    "config": ("yurt.cli.config", "Show the effective configuration and where each value came from"),
    "convert": ("yurt.cli.convert", "Convert a Dockerfile to a definition file or back"),
    "inspect": ("yurt.cli.inspect", "Show an image's metadata"),
    "run-help": ("yurt.cli.inspect", "Show an image's help text"),
    "version": ("yurt.cli.misc", "Show the yurt version"),
    "help": ("yurt.cli.misc", "Show help for a command"),
    "completion": ("yurt.cli.completion", "Print a bash, zsh or fish completion script"),
}


# Under the names below (a console script, or a symbolic link a site makes) yurt answers as this Apptainer
# release does at the command line: its `--version`, `version`, inspect and instance JSON, exit statuses.
# 1.3.6: the last 1.3 release, whose options are the ones clients of "Apptainer 1.x" pass (README).
APPTAINER_VERSION = "1.3.6"
IDENTITIES = {"apptainer": "apptainer", "yurt-apptainer": "apptainer", "singularity": "singularity",
              "yurt-singularity": "singularity", "run-singularity": "apptainer"}
# Apptainer commands yurt does not have: said so in one line, not "unknown command".
APPTAINER_ONLY = ("sign", "verify", "key", "keyserver", "remote", "search", "delete", "tag", "overlay", "oci",
                  "plugin", "checkpoint", "capability", "sif", "buildcfg", "confgen")


class Context:
    """Global options shared by every command; ``identity`` is ``yurt``, ``apptainer`` or ``singularity``
    (the name yurt was started as)."""

    def __init__(self, debug: bool = False, quiet: bool = False, identity: str = "yurt") -> None:
        self.debug = debug
        self.quiet = quiet
        self.identity = identity
        self.long_version = False  # `--version` (not `version`): Apptainer prints the name too

    @property
    def apptainer(self) -> bool:
        """Started as ``apptainer``/``singularity``: Apptainer's output formats and exit statuses."""
        return self.identity != "yurt"


def _truthy(*keys: str) -> bool:
    from yurt.config import bool_text, env_lookup

    hit = env_lookup(keys, None, bool_text)
    return hit is not None and hit[1].lower() in ("1", "true", "yes", "on")


def identity_of(argv0: str) -> str:
    return IDENTITIES.get(argv0.rpartition("/")[2], "yurt")


def main(argv: list[str] | None = None) -> int:
    identity = identity_of(sys.argv[0] if sys.argv else "")
    argv = sys.argv[1:] if argv is None else argv
    # A file name that is not UTF-8 reaches us as surrogate escapes; printed back, it is the same
    # bytes again (as ls prints it), not a UnicodeEncodeError after the work is done.
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="surrogateescape")
    ctx = Context(debug=_truthy("DEBUG"), quiet=_truthy("QUIET", "SILENT"), identity=identity)
    # Errors after pivot_root are reported from inside the container, where the
    # host's library is gone: load what reporting needs now.
    from yurt.errors import YurtError, open_api_channel

    open_api_channel()  # started by yurt.api: where the class of an error goes (see yurt.errors)
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        opt = argv[i]
        if opt in ("-d", "--debug"):
            ctx.debug = True
        elif opt in ("-q", "--quiet", "-s", "--silent"):
            ctx.quiet = True
        elif opt in ("-v", "--verbose"):
            pass  # Apptainer's middle level: yurt prints its notices anyway, and more only with --debug
        elif opt == "--nocolor":
            os.environ["NO_COLOR"] = "1"
        elif opt in ("-h", "--help"):
            argv = ["help"]
            i = 0
            break
        elif opt in ("--version", "-V"):
            argv, ctx.long_version = ["version"], True
            i = 0
            break
        elif opt in ("-c", "--config", "--build-config") or opt.startswith("--config="):
            return _fail(f"{opt} is not supported: yurt does not read apptainer.conf",
                         "site settings are in /etc/yurt/yurt.toml, see 'yurt config show'")
        else:
            return _fail(f"unknown global option {opt}", "see 'yurt help'")
        i += 1
    if ctx.quiet:
        os.environ["YURT_QUIET"] = "1"
    if i >= len(argv):
        argv, i = ["help"], 0
    command, rest = argv[i], argv[i + 1:]
    if ctx.apptainer and command.startswith("instance."):  # Singularity 2's spelling, which spython still uses
        command, rest = "instance", [command[9:], *rest]
    entry = COMMANDS.get(command)
    if entry is None:
        if ctx.apptainer and command in APPTAINER_ONLY:
            return _fail(f"'{identity} {command}' is not supported by yurt", "see 'yurt help' for what is")
        return _fail(f"unknown command {command!r}", "see 'yurt help' for the list")
    try:
        module = __import__(entry[0], fromlist=["main"])
        return int(module.main(command, rest, ctx) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `yurt inspect IMG | head`: the reader is gone, as with any Unix tool
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return 141
    except BaseException as e:  # noqa: BLE001 - the one place that turns errors into exit codes
        if isinstance(e, SystemExit):
            raise
        if ctx.debug:
            import traceback

            traceback.print_exc()
        if isinstance(e, YurtError):
            return _fail(str(e), code=e.exit_code, error=e)
        if isinstance(e, OSError):
            from yurt.errors import os_error_text

            return _fail(os_error_text(e), error=YurtError(os_error_text(e)))
        text, hint = f"internal error: {type(e).__name__}: {e}", "rerun with --debug and report it"
        return _fail(text, hint, error=YurtError(text, hint))


def _fail(message: str, hint: str | None = None, code: int = 255, error=None) -> int:
    """The one ``yurt: error:`` line; ``error`` (default: a UsageError of the same words) also goes to the
    Python API that started this yurt, if one did."""
    from yurt.errors import UsageError, one_line, tell_api

    tell_api(error if error is not None else UsageError(message, hint))
    text = f"yurt: error: {message}" + (f" ({hint})" if hint else "")
    sys.stderr.write(one_line(text) + "\n")
    return code
