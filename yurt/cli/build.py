"""``yurt build OUT SOURCE``: a definition file (recipe) or a root filesystem directory -> a SIF or sandbox."""

from __future__ import annotations

import os

from yurt.cli.options import Flag, parse_command
from yurt.errors import UsageError

FLAGS = [
    Flag("sandbox", help="write a directory (sandbox) image instead of a SIF"),
    Flag("notest", aliases=("no-test",), help="do not run the definition file's %test section"),
    Flag("build-arg", "list", None, "value for {{ KEY }} in the definition file (repeatable)", "KEY=VALUE"),
    Flag("build-arg-file", "value", None, "file of KEY=VALUE lines for {{ KEY }} in the definition file", "FILE"),
    Flag("warn-unused-build-args", help="warn about unused build arguments instead of failing"),
    Flag("fakeroot", short="f", help="accepted for Apptainer compatibility: unprivileged builds always use "
         "a fakeroot (with your /etc/subuid range when there is one)"),
    Flag("compression", "value", None,
         "squashfs compressor: zstd (default, level 3), gzip (kernels < 4.14), lz4, xz, lzo", "ALG",
         choices=("zstd", "gzip", "lz4", "xz", "lzo")),
    Flag("mksquashfs-args", "value", None, "extra arguments passed to mksquashfs", "ARGS"),
    Flag("force", short="F", help="overwrite OUT if it exists"),
    Flag("no-cache", help="run every step even when the build cache has it (the cache is still filled)"),
    Flag("dockerfile", "value", None, "build this Dockerfile; SOURCE is then the build context directory", "FILE"),
    Flag("tag", "value", "t", "name recorded in the image (org.opencontainers.image.ref.name)", "NAME"),
    Flag("target", "value", None, "Dockerfile: build this stage (and what it needs) instead of the last", "STAGE"),
    Flag("help", short="h", help="show this help"),
]
SYNOPSIS = ("[options] OUT RECIPE.def|Dockerfile|SOURCE_DIR  (or --dockerfile FILE OUT CONTEXT_DIR)",
            "Build an image from a definition file, a Dockerfile (named Dockerfile or Containerfile, or given with "
            "--dockerfile; its directory is the context), or a directory (a root filesystem). Unchanged steps come "
            "from the build cache. Reproducible when SOURCE_DATE_EPOCH is set.")


def main(command: str, argv: list[str], ctx) -> int:
    parsed = parse_command(command, argv, FLAGS, *SYNOPSIS, stop_at_positional=False)
    if parsed is None:
        return 0
    values, positionals = parsed
    if len(positionals) != 2:
        raise UsageError("build needs OUT and a definition file or SOURCE_DIR", f"yurt build {SYNOPSIS[0]}")
    out, source = positionals
    if not os.path.exists(source):
        raise UsageError(f"{source} does not exist", "give a definition file or a root filesystem directory")
    if os.path.lexists(out):
        if not values["force"]:
            raise UsageError(f"{out} already exists", "use --force to overwrite it")
        if os.path.isdir(out) and not os.path.islink(out):
            raise UsageError(f"{out} is a directory; remove it first")
    import shlex

    mksquashfs_args = shlex.split(values["mksquashfs_args"] or "")
    from yurt.image.squashfs import DEFAULT_COMPRESSION

    compression = values["compression"] or DEFAULT_COMPRESSION
    from yurt.builder.dockerbuild import is_dockerfile

    dockerfile = values["dockerfile"]
    if dockerfile is None and os.path.isfile(source) and is_dockerfile(source):
        dockerfile, source = source, os.path.dirname(os.path.abspath(source))
    if dockerfile is not None:
        from yurt.builder import dockerbuild
        from yurt.builder.templating import parse_build_args
        from yurt.cli.pull import options_from_environment

        if not os.path.isdir(source):
            raise UsageError(f"{source} is not a directory", "with --dockerfile, give the build context directory")
        dockerbuild.build(dockerfile, source, out, sandbox=values["sandbox"],
                          build_args=parse_build_args(values["build_arg"]), target=values["target"],
                          tag=values["tag"], compression=compression, mksquashfs_args=mksquashfs_args,
                          force=values["force"], pull_options=options_from_environment(ctx),
                          no_cache=values["no_cache"])
    elif os.path.isdir(source):
        from yurt.image import pack

        if values["sandbox"]:
            pack.build_sandbox(source, out)
        else:
            pack.build_sif(source, out, compression=compression, mksquashfs_args=mksquashfs_args)
    else:
        from yurt.builder import executor
        from yurt.builder.templating import parse_build_args
        from yurt.cli.pull import options_from_environment
        executor.build(source, out, sandbox=values["sandbox"], notest=values["notest"],
                       build_args=parse_build_args(values["build_arg"]), build_arg_file=values["build_arg_file"],
                       warn_unused_build_args=values["warn_unused_build_args"], fakeroot=values["fakeroot"],
                       compression=compression, mksquashfs_args=mksquashfs_args, force=values["force"],
                       pull_options=options_from_environment(ctx), no_cache=values["no_cache"])
    if not ctx.quiet:
        from yurt.cli.terminal import done

        done(f"built {out}")
    return 0
