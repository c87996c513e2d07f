"""``yurt convert FILE``: a Dockerfile to a definition file, or a definition file to a Dockerfile."""

from __future__ import annotations

import os
import sys

from yurt.cli.options import Flag, parse_command
from yurt.errors import UsageError, warn

FLAGS = [
    Flag("output", "value", "o", "write here instead of standard output", "FILE"),
    Flag("to", "value", None, "target format: def or dockerfile (default: the other one)", "FORMAT",
         choices=("def", "dockerfile")),
    Flag("context", "value", None, "Dockerfile build context (tells directories from files in COPY)", "DIR"),
    Flag("help", short="h", help="show this help"),
]
SYNOPSIS = ("[options] FILE", "Convert a Dockerfile into an Apptainer definition file, or back, for the "
            "instructions both can express; the rest is kept as comments and listed as warnings.")


def _is_dockerfile(path: str, text: str) -> bool:
    base = os.path.basename(path).lower()
    if base in ("dockerfile", "containerfile") or base.endswith((".dockerfile", ".containerfile")):
        return True
    if base.endswith(".def"):
        return False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            return stripped.split()[0].upper() in ("FROM", "ARG")
    return False


def main(command: str, argv: list[str], ctx) -> int:
    parsed = parse_command(command, argv, FLAGS, *SYNOPSIS)
    if parsed is None:
        return 0
    values, positionals = parsed
    if len(positionals) != 1:
        raise UsageError("convert needs one file", f"yurt convert {SYNOPSIS[0]}")
    path = positionals[0]
    from yurt.builder.executor import RECIPE_LIMIT
    from yurt.readfile import read_text

    text = read_text(path, "the recipe", RECIPE_LIMIT)
    to_def = _is_dockerfile(path, text) if values["to"] is None else values["to"] in ("def", "deffile")
    if values["to"] not in (None, "def", "deffile", "dockerfile"):
        raise UsageError(f"unknown format {values['to']!r}", "use def or dockerfile")
    if to_def:
        from yurt.builder import dockerfile, dockerfile_convert

        stages = dockerfile.parse(text, filename=path)
        result, warnings = dockerfile_convert.to_deffile(stages,
                                                         context_dir=values["context"] or os.path.dirname(path) or ".")
    else:
        from yurt.builder import convert, deffile

        defs = deffile.parse(text, filename=path)
        result, warnings = convert.to_dockerfile(defs)
    for w in warnings:
        warn(w)
    if values["output"]:
        from yurt.store.atomic import write_bytes

        write_bytes(values["output"], result.encode())
    else:
        sys.stdout.write(result)
    return 0
