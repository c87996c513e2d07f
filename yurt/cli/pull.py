"""``yurt pull [OUT.sif] REF``: fetch an image into the cache and, optionally, copy it out."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager, nullcontext

from yurt.cli.options import REGISTRY_FLAGS, Flag, parse, parse_command
from yurt.errors import UsageError

# Shared with `yurt push`.
TLS_FLAGS = [
    *REGISTRY_FLAGS,
    Flag("ca-file", "value", None, "CA certificate file for the registry's TLS", "FILE"),
]
# Picking the image, shared with `yurt build OUT docker://...`.
PLATFORM_FLAGS = [
    Flag("arch", "value", None, "architecture to pull from a multi-arch image (default: this machine's)", "ARCH",
         env=("PULL_ARCH",)),
    Flag("arch-variant", "value", None, "with --arch, its variant (arm64: v8)", "VARIANT", env=("PULL_ARCH_VARIANT",)),
    Flag("platform", "value", None, "platform os/arch[/variant], e.g. linux/arm64/v8", "PLATFORM"),
]
FLAGS = [
    *PLATFORM_FLAGS,
    *TLS_FLAGS,
    Flag("compression", "value", None, "squashfs compression of the converted image: zstd (default), gzip, lz4",
         "ALG", choices=("zstd", "gzip", "lz4", "xz", "lzo")),
    Flag("force", short="F", help="download and convert again, and overwrite OUT"),
    Flag("name", "value", None, "write the image to this file (instead of OUT)", "FILE", own_env=False,
         env=("PULL_NAME",)),
    Flag("dir", "value", None, "write the image into this directory", "DIR", own_env=False,
         env=("PULLDIR", "PULLFOLDER")),
    Flag("disable-cache", help="use no cache: download into a temporary one, removed afterwards"),
    Flag("sandbox", help="write a sandbox directory instead of a SIF (default name without .sif)"),
    Flag("allow-unsigned", short="U", aliases=("allow-unauthenticated",),
         help="accepted: yurt pulls unsigned images (it verifies no signatures)"),
    Flag("reproducible", help="with SOURCE_DATE_EPOCH set (the image's dates), as Apptainer's --reproducible"),
    Flag("tmpdir", "value", None, "temporary directory for the conversion", "DIR", hidden=True),
    Flag("library", "value", None, "not supported (library:// is refused)", "URL", hidden=True),
    Flag("docker-login", help="not supported: use 'yurt registry login'", hidden=True),
    Flag("help", short="h", help="show this help"),
]
SYNOPSIS = ("[options] [OUT.sif] REFERENCE",
            "Pull docker://HOST/REPO:TAG, oras://..., oci:DIR[:TAG], oci-archive:FILE or docker-archive:FILE "
            "into the cache (YURT_CACHEDIR, default ~/.cache/yurt) and write OUT.sif (default NAME_TAG.sif; "
            "--name FILE and --dir DIR as Apptainer's).")


def pull_options(values: dict, ctx):
    from yurt.cli.progress import Progress
    from yurt.registry.pull import PullOptions

    arch, variant = values.get("arch"), values.get("arch_variant") or None
    if values.get("authfile"):
        os.environ["REGISTRY_AUTH_FILE"] = os.path.abspath(values["authfile"])
    if values.get("platform"):
        parts = values["platform"].split("/")
        if len(parts) < 2 or parts[0] != "linux":
            raise UsageError(f"bad --platform {values['platform']!r}", "use linux/ARCH[/VARIANT]")
        arch, variant = parts[1], (parts[2] if len(parts) > 2 else None)
    return PullOptions(arch=arch, variant=variant, insecure=values.get("insecure", False),
                       ca_file=values.get("ca_file"), compression=values.get("compression") or "zstd",
                       force=values.get("force", False), quiet=ctx.quiet,
                       progress=Progress(quiet=ctx.quiet))


def options_from_environment(ctx, given: dict | None = None):
    """PullOptions from ``YURT_INSECURE``, ``YURT_ARCH``, ... for pulls that other commands make (``exec
    docker://``, a build's ``Bootstrap: docker``), with those of the command's own options that are set
    (``given``: ``--insecure``, ``--authfile``, ``--arch``...)."""
    values, _ = parse([], FLAGS, stop_at_positional=False)
    values.update({k: v for k, v in (given or {}).items() if k in _SHARED and v})
    return pull_options(values, ctx)


_SHARED = ("insecure", "authfile", "ca_file", "arch", "arch_variant", "platform")


@contextmanager
def without_cache():
    """``--disable-cache``: everything pulled meanwhile goes to a new temporary cache, removed afterwards
    (under ``YURT_TMPDIR``/``APPTAINER_TMPDIR``, else ``TMPDIR``)."""
    import tempfile

    from yurt.config import env_lookup
    from yurt.image.squashfs import remove_tree

    hit = env_lookup(("TMPDIR",))
    saved = os.environ.get("YURT_CACHEDIR")
    try:
        temp = tempfile.mkdtemp(prefix="yurt-nocache-", dir=hit[1] if hit else None)
    except OSError as e:
        raise UsageError(f"cannot make a temporary cache: {e.strerror}", "set YURT_TMPDIR to a writable directory")
    os.environ["YURT_CACHEDIR"] = temp
    try:
        yield temp
    finally:
        if saved is None:
            os.environ.pop("YURT_CACHEDIR", None)
        else:
            os.environ["YURT_CACHEDIR"] = saved
        remove_tree(temp)


def check_reproducible(values: dict) -> None:
    if values.get("reproducible") and not os.environ.get("SOURCE_DATE_EPOCH"):
        raise UsageError("--reproducible needs SOURCE_DATE_EPOCH", "set it to the image's creation time "
                         "(seconds since 1970): yurt's images are reproducible with it")


def archive_ref(ref: str) -> str:
    """``docker-archive://FILE`` (cwltool writes that) is ``docker-archive:FILE`` for a relative FILE too."""
    for scheme in ("docker-archive:", "oci-archive:"):
        if ref.startswith(scheme + "//") and not ref.startswith(scheme + "///"):
            return scheme + ref[len(scheme) + 2:]
    return ref


def refuse_unsupported(values: dict) -> None:
    if values.get("library"):
        raise UsageError("--library is not supported: yurt has no library:// client", "use docker:// or oras://")
    if values.get("docker_login"):
        raise UsageError("--docker-login is not supported", "log in once with 'yurt registry login', or set "
                         "APPTAINER_DOCKER_USERNAME and APPTAINER_DOCKER_PASSWORD")
    if values.get("tmpdir"):
        os.environ["YURT_TMPDIR"] = os.path.abspath(values["tmpdir"])


def default_name(ref: str) -> str:
    tail = ref.split("://", 1)[-1].split(":", 1)[-1] if ref.startswith(("oci:", "oci-archive:",
                                                                         "docker-archive:")) else ref
    tail = tail.split("://", 1)[-1].rstrip("/")
    name = tail.rsplit("/", 1)[-1]
    name = name.split("@", 1)[0]
    base, _, tag = name.partition(":")
    base = os.path.splitext(base)[0] if ref.startswith(("oci-archive:", "docker-archive:")) else base
    return f"{base}_{tag or 'latest'}.sif"


def main(command: str, argv: list[str], ctx) -> int:
    parsed = parse_command(command, argv, FLAGS, *SYNOPSIS, stop_at_positional=False)
    if parsed is None:
        return 0
    values, positionals = parsed
    if len(positionals) not in (1, 2):
        raise UsageError("pull needs a reference", f"yurt pull {SYNOPSIS[0]}")
    refuse_unsupported(values)
    check_reproducible(values)
    ref = archive_ref(positionals[-1])
    out = values["name"] or (positionals[0] if len(positionals) == 2 else default_name(ref))
    if values["sandbox"] and not values["name"] and len(positionals) == 1 and out.endswith(".sif"):
        out = out[:-4]
    if values["dir"]:  # Apptainer: the name is joined to the directory (an absolute name stays as it is)
        out = os.path.join(values["dir"], out)
    if os.path.lexists(out) and not values["force"]:
        raise UsageError(f"{out} already exists", "use --force to overwrite it")
    from yurt.registry.pull import is_pullable, pull

    if not is_pullable(ref):
        raise UsageError(f"cannot pull {ref!r}", "use docker://, oras://, oci:, oci-archive: or docker-archive:")
    if values["sandbox"]:
        return _pull_sandbox(values, out, ref, ctx)
    with without_cache() if values["disable_cache"] else nullcontext():
        result = pull(ref, pull_options(values, ctx))
        _write_out(result.sif, out)
    if not ctx.quiet:
        how = "from the cache" if result.cached else f"{result.downloaded_bytes} bytes downloaded"
        from yurt.cli.terminal import done

        done(f"{out} ({result.manifest_digest[:19]}, {how})")
    return 0


def _pull_sandbox(values: dict, out: str, ref: str, ctx) -> int:
    """``pull --sandbox``: the image unpacked into the directory ``out``, as ``build --sandbox OUT REF``."""
    from yurt.cli.fromref import build_from
    from yurt.image.squashfs import DEFAULT_COMPRESSION

    if os.path.isdir(out) and not os.path.islink(out):
        raise UsageError(f"{out} is a directory; remove it first")
    with without_cache() if values["disable_cache"] else nullcontext():
        build_from(ref, out, sandbox=True, pull_options=pull_options(values, ctx), notest=True,
                   compression=DEFAULT_COMPRESSION, force=values["force"])
    if not ctx.quiet:
        from yurt.cli.terminal import done

        done(f"{out} (a sandbox)")
    return 0


def _write_out(sif, out: str) -> None:
    """The cached SIF at ``out``: a hard link where it can be (one file system), else a copy; atomic."""
    tmp = f"{out}.tmp-{os.getpid()}"
    try:
        try:
            os.link(sif, tmp)  # cache and output on one file system: no copy
        except OSError:
            shutil.copyfile(sif, tmp)
        os.replace(tmp, out)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
