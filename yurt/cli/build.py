"""``yurt build OUT.sif DIR`` and ``yurt build --sandbox OUT DIR``: pack a live filesystem."""

from __future__ import annotations

import os

from yurt.cli.options import Flag, parse_command
from yurt.errors import UsageError

FLAGS = [
    Flag("sandbox", help="write a directory (sandbox) image instead of a SIF"),
    Flag("compression", "value", None, "squashfs compressor: gzip (default), zstd, lz4, xz, lzo", "ALG"),
    Flag("mksquashfs-args", "value", None, "extra arguments passed to mksquashfs", "ARGS"),
    Flag("force", short="F", help="overwrite OUT if it exists"),
    Flag("help", short="h", help="show this help"),
]
SYNOPSIS = ("[options] OUT SOURCE_DIR",
            "Build an image from a directory (a root filesystem). Reproducible when SOURCE_DATE_EPOCH is set.")


def main(command: str, argv: list[str], ctx) -> int:
    parsed = parse_command(command, argv, FLAGS, *SYNOPSIS, stop_at_positional=False)
    if parsed is None:
        return 0
    values, positionals = parsed
    if len(positionals) != 2:
        raise UsageError("build needs OUT and SOURCE_DIR", f"yurt build {SYNOPSIS[0]}")
    out, source = positionals
    if not os.path.isdir(source):
        raise UsageError(f"{source} is not a directory",
                         "this yurt builds from a root filesystem directory; recipes come later")
    if os.path.lexists(out):
        if not values["force"]:
            raise UsageError(f"{out} already exists", "use --force to overwrite it")
        if os.path.isdir(out) and not os.path.islink(out):
            raise UsageError(f"{out} is a directory; remove it first")
    from yurt.image import pack

    if values["sandbox"]:
        pack.build_sandbox(source, out)
    else:
        import shlex

        pack.build_sif(source, out, compression=values["compression"] or "gzip",
                       mksquashfs_args=shlex.split(values["mksquashfs_args"] or ""))
    if not ctx.quiet:
        print(f"yurt: built {out}")
    return 0
