"""``yurt build OUT SOURCE``: a definition file (recipe), a root filesystem directory, an image or a
reference (``docker://``, ``oras://``, ``oci:``, ``docker-archive:``...) -> a SIF or sandbox."""

from __future__ import annotations

import os

from yurt.cli.fromref import is_image
from yurt.cli.options import REGISTRY_FLAGS, Flag, parse_command
from yurt.cli.pull import PLATFORM_FLAGS
from yurt.errors import UsageError

# Apptainer's build options yurt cannot honour, each refused in one line with the reason.
REFUSED = {
    "section": "yurt builds the whole definition file (its build cache skips unchanged steps)",
    "json": "yurt reads definition files and Dockerfiles, not JSON definitions",
    "update": "yurt builds into a new image; build from the sandbox instead (Bootstrap: localimage)",
    "library": "yurt has no library:// client; use docker:// or oras://",
    "no_cleanup": "yurt removes a failed build's files; rerun with --debug to see the step that failed",
    "encrypt": "yurt cannot build encrypted images",
    "passphrase": "yurt cannot build encrypted images",
    "pem_path": "yurt cannot build encrypted images",
    "nv": "yurt builds bind only what the build needs (no GPU driver)",
    "nvccli": "yurt builds bind only what the build needs (no GPU driver)",
    "rocm": "yurt builds bind only what the build needs (no GPU driver)",
    "bind": "yurt builds bind only what the build needs; use %files to copy host files in",
    "mount": "yurt builds bind only what the build needs; use %files to copy host files in",
    "writable_tmpfs": "yurt runs %test on the built tree itself",
    "ignore_userns": "yurt builds need a user namespace unless they run as root",
    "data": "yurt cannot build OCI-SIF data containers",
    "compat32": "yurt builds bind only what the build needs (no GPU driver)",
    "docker_login": "log in once with 'yurt registry login', or set APPTAINER_DOCKER_USERNAME and _PASSWORD",
}
_REFUSED_KINDS = {"section": "list", "library": "value", "pem_path": "value", "bind": "list", "mount": "list",
                  "data": "list"}
# Sources build takes Apptainer's way but yurt cannot read.
NO_TRANSPORT = {"docker-daemon:": "yurt does not talk to a Docker daemon: 'docker save -o IMG.tar REF' and build "
                                  "from docker-archive:IMG.tar",
                "library://": "yurt has no library:// client; use docker:// or oras://",
                "shub://": "Singularity Hub is gone; use docker:// or oras://",
                "http://": "download the image first", "https://": "download the image first",
                "ipfs://": "yurt has no IPFS client"}
FLAGS = [
    Flag("sandbox", short="s", help="write a directory (sandbox) image instead of a SIF"),
    Flag("notest", short="T", aliases=("no-test",), help="do not run the definition file's %test section"),
    Flag("build-arg", "list", None, "value for {{ KEY }} in the definition file (repeatable)", "KEY=VALUE"),
    Flag("build-arg-file", "value", None, "file of KEY=VALUE lines for {{ KEY }} in the definition file", "FILE"),
    Flag("warn-unused-build-args", help="warn about unused build arguments instead of failing"),
    Flag("fakeroot", short="f", help="accepted for Apptainer compatibility: unprivileged builds always use "
         "a fakeroot (with your /etc/subuid range when there is one)"),
    Flag("userns", help="accepted: unprivileged builds always run in a user namespace"),
    Flag("ignore-subuid", help="map only your own id even if /etc/subuid has a range", hidden=True),
    Flag("ignore-fakeroot-command", help="accepted: yurt never uses fakeroot(1)", hidden=True),
    Flag("compression", "value", None,
         "squashfs compressor: zstd (default, level 3), gzip (kernels < 4.14), lz4, xz, lzo", "ALG",
         choices=("zstd", "gzip", "lz4", "xz", "lzo")),
    Flag("mksquashfs-args", "value", None, "extra arguments passed to mksquashfs", "ARGS"),
    Flag("force", short="F", help="overwrite OUT if it exists"),
    Flag("no-cache", help="run every step even when the build cache has it (the cache is still filled)"),
    Flag("disable-cache", help="use no cache at all (images and steps): a temporary one, removed afterwards"),
    Flag("fix-perms", help="with --sandbox, give the owner read/write (and search) on everything in it"),
    Flag("reproducible", help="with SOURCE_DATE_EPOCH set (the image's dates), as Apptainer's --reproducible"),
    Flag("dockerfile", "value", None, "build this Dockerfile; SOURCE is then the build context directory", "FILE"),
    Flag("tag", "value", "t", "name recorded in the image (org.opencontainers.image.ref.name)", "NAME"),
    Flag("target", "value", None, "Dockerfile: build this stage (and what it needs) instead of the last", "STAGE"),
    *PLATFORM_FLAGS,
    *REGISTRY_FLAGS,
    Flag("tmpdir", "value", None, "where the build works (default: next to OUT)", "DIR", hidden=True),
    *(Flag(dest.replace("_", "-"), _REFUSED_KINDS.get(dest, "bool"), {"update": "u", "encrypt": "e",
                                                                      "bind": "B"}.get(dest),
           "not supported by yurt (Apptainer option)", hidden=True) for dest in REFUSED),
    Flag("help", short="h", help="show this help"),
]
SYNOPSIS = ("[options] OUT RECIPE.def|Dockerfile|SOURCE_DIR|IMAGE|REFERENCE  (or --dockerfile FILE OUT CONTEXT_DIR)",
            "Build an image from a definition file (a file with a Bootstrap: header), a Dockerfile (one without, "
            "named Dockerfile or Containerfile, or given with --dockerfile; its directory is the context), a "
            "directory (a root filesystem), an image (a SIF: --sandbox unpacks it) or a reference (docker://, "
            "oras://, oci:, oci-archive:, docker-archive:). Unchanged steps come from the build cache. "
            "Reproducible when SOURCE_DATE_EPOCH is set.")


def main(command: str, argv: list[str], ctx) -> int:
    parsed = parse_command(command, argv, FLAGS, *SYNOPSIS, stop_at_positional=False)
    if parsed is None:
        return 0
    values, positionals = parsed
    if len(positionals) != 2:
        raise UsageError("build needs OUT and a definition file or SOURCE_DIR", f"yurt build {SYNOPSIS[0]}")
    for dest, why in REFUSED.items():
        if values[dest]:
            raise UsageError(f"--{dest.replace('_', '-')} is not supported: {why}")
    from contextlib import nullcontext

    from yurt.cli.fromref import uri_of
    from yurt.cli.pull import archive_ref, check_reproducible, without_cache

    check_reproducible(values)
    if values["tmpdir"]:
        os.environ["YURT_TMPDIR"] = os.path.abspath(values["tmpdir"])
    if values["ignore_subuid"]:
        os.environ["YURT_BUILD_IGNORE_SUBUID"] = "1"
    if values["fix_perms"] and not values["sandbox"]:
        raise UsageError("--fix-perms works with --sandbox", "a SIF is read-only anyway")
    out, source = positionals[0], archive_ref(positionals[1])
    for prefix, why in NO_TRANSPORT.items():
        if source.startswith(prefix):
            raise UsageError(f"cannot build from {source!r}: {why}")
    uri = uri_of(source)
    if uri is None and not os.path.exists(source):
        raise UsageError(f"{source} does not exist", "give a definition file, a root filesystem directory, an "
                         "image or a reference (docker://...)")
    if os.path.lexists(out):
        if not values["force"]:
            raise UsageError(f"{out} already exists", "use --force to overwrite it")
        if os.path.isdir(out) and not os.path.islink(out):
            raise UsageError(f"{out} is a directory; remove it first")
    with without_cache() if values["disable_cache"] else nullcontext():
        _build(values, out, source, uri, ctx)
    if values["fix_perms"]:
        _fix_perms(out)
    if not ctx.quiet:
        from yurt.cli.terminal import done

        done(f"built {out}")
    return 0


def _build(values: dict, out: str, source: str, uri: str | None, ctx) -> None:
    import shlex

    from yurt.cli.pull import options_from_environment
    from yurt.image.squashfs import DEFAULT_COMPRESSION

    mksquashfs_args = shlex.split(values["mksquashfs_args"] or "")
    compression = values["compression"] or DEFAULT_COMPRESSION
    pull_options = options_from_environment(ctx, values)
    if uri is not None and not values["sandbox"]:  # the pulled SIF is the image: as `yurt pull OUT REF`
        from yurt.cli.pull import _write_out
        from yurt.registry.pull import pull

        _write_out(pull(source, pull_options).sif, out)
        return
    if uri is None and os.path.isfile(source) and is_image(source):
        if not values["sandbox"]:  # a SIF or squashfs to a SIF: a copy, as Apptainer's rebuild gives the same
            import shutil

            if os.path.lexists(out) and os.path.samefile(source, out):
                raise UsageError(f"{out} is {source} itself")
            tmp = f"{out}.tmp-{os.getpid()}"
            try:
                shutil.copyfile(source, tmp)
                os.replace(tmp, out)
            finally:
                if os.path.lexists(tmp):
                    os.unlink(tmp)
            return
    dockerfile = values["dockerfile"]
    from yurt.builder.dockerbuild import recipe_is_dockerfile

    if dockerfile is None and uri is None and os.path.isfile(source) and not is_image(source) \
            and recipe_is_dockerfile(source):
        dockerfile, source = source, os.path.dirname(os.path.abspath(source))
    if dockerfile is not None:
        from yurt.builder import dockerbuild
        from yurt.builder.templating import parse_build_args

        if not os.path.isdir(source):
            raise UsageError(f"{source} is not a directory", "with --dockerfile, give the build context directory")
        dockerbuild.build(dockerfile, source, out, sandbox=values["sandbox"],
                          build_args=parse_build_args(values["build_arg"]), target=values["target"],
                          tag=values["tag"], compression=compression, mksquashfs_args=mksquashfs_args,
                          force=values["force"], pull_options=pull_options, no_cache=values["no_cache"])
    elif uri is None and os.path.isdir(source):
        from yurt.image import pack

        if values["sandbox"]:
            pack.build_sandbox(source, out)
        else:
            pack.build_sif(source, out, compression=compression, mksquashfs_args=mksquashfs_args)
    else:
        from yurt.builder import executor
        from yurt.builder.templating import parse_build_args

        options = dict(notest=values["notest"], build_args=parse_build_args(values["build_arg"]),
                       build_arg_file=values["build_arg_file"],
                       warn_unused_build_args=values["warn_unused_build_args"], fakeroot=values["fakeroot"],
                       compression=compression, mksquashfs_args=mksquashfs_args, force=values["force"],
                       no_cache=values["no_cache"])
        if uri is not None or is_image(source):  # what Apptainer builds from a reference or an image
            from yurt.cli.fromref import build_from

            build_from(source, out, sandbox=values["sandbox"], pull_options=pull_options, **options)
        else:
            executor.build(source, out, sandbox=values["sandbox"], pull_options=pull_options, **options)


def _fix_perms(root: str) -> None:
    """``--fix-perms``: owner rwX on every file and directory of the sandbox (symlinks untouched), so that
    its owner can change and remove it all (images carry 0500 directories and 0400 files)."""
    import stat

    os.chmod(root, stat.S_IMODE(os.lstat(root).st_mode) | stat.S_IRWXU)
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(top, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                continue
            extra = stat.S_IRUSR | stat.S_IWUSR | (stat.S_IXUSR if stat.S_ISDIR(st.st_mode) else 0)
            if st.st_mode & extra != extra:
                os.chmod(path, stat.S_IMODE(st.st_mode) | extra)
