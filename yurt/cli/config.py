"""``yurt config show``: the effective configuration and where each value came from."""

from __future__ import annotations

import json

from yurt.cli.options import Flag, parse, usage
from yurt.errors import UsageError

FLAGS = [Flag("json", short="j", help="print JSON"), Flag("help", short="h", help="show this help")]
SUMMARY = ("Show the effective configuration: built-in defaults, the site file (/etc/yurt/yurt.toml),\n"
           "your file (~/.config/yurt/config.toml) and the environment, each value with its origin.")
TOP_USAGE = f"""Usage: yurt config show [--json]

{SUMMARY}

Subcommands:
  show    Print every setting, its value and where it came from"""


def main(command: str, argv: list[str], ctx) -> int:
    if not argv:
        raise UsageError("config needs a subcommand: show", "see 'yurt help config'")
    sub, rest = argv[0], argv[1:]
    if sub in ("-h", "--help", "help"):
        print(TOP_USAGE)
        return 0
    if sub != "show":
        raise UsageError(f"unknown config subcommand {sub!r}", "use 'yurt config show'")
    values, positionals = parse(rest, FLAGS, stop_at_positional=False)
    if values["help"]:
        print(usage("config show", "[--json]", SUMMARY, FLAGS))
        return 0
    if positionals:
        raise UsageError(f"unexpected argument {positionals[0]!r}", "yurt config show [--json]")
    from yurt import config

    cfg = config.load()
    site, _ = config.site_path()
    user = config.user_path()
    settings = {name: {"value": value, "source": cfg.sources[name], "scope": config.KEYS[name].scope}
                for name, value in cfg.as_dict().items()}
    if values["json"]:
        doc = {"site_file": site, "site_file_read": cfg.site_file is not None, "policy": cfg.policy, "user_file": user,
               "user_file_read": cfg.user_file is not None, "notes": cfg.notes, "settings": settings}
        print(json.dumps(doc, indent=2))
        return 0
    print(f"# site file: {site}" + ("" if cfg.site_file else " (not present)"))
    print(f"# user file: {user}" + ("" if cfg.user_file else " (not present)"))
    print("# site policy: " + ("in force (helpers only from helper_path; images checked on the open file; no "
                               "shared unpacked copies)" if cfg.policy else "none (the site file sets no policy key)"))
    for note in cfg.notes:
        print(f"# note: {note}")
    width = max(len(f"{n} = {_show(s['value'])}") for n, s in settings.items())
    for name, s in settings.items():
        line = f"{name} = {_show(s['value'])}"
        origin = s["source"] + {config.SITE_ONLY: ", site only", config.CEILING: ", the site's value is a ceiling"}.get(
            s["scope"], "")
        print(f"{line:<{width}}  # {origin}")
    return 0


def _show(value: object) -> str:
    """A value as TOML would write it; an unset allow-list as a comment-like marker."""
    if value is None:
        return "(not set: no restriction)"
    return json.dumps(value)
