"""``yurt pull [OUT.sif] REF``: fetch an image into the cache and, optionally, copy it out."""

from __future__ import annotations

import os
import shutil

from yurt.cli.options import Flag, parse, parse_command
from yurt.errors import UsageError

# Shared with `yurt push`.
TLS_FLAGS = [
    Flag("insecure", help="plain HTTP or unverified TLS for this registry", env=("YURT_NOHTTPS",)),
    Flag("ca-file", "value", None, "CA certificate file for the registry's TLS", "FILE"),
]
FLAGS = [
    Flag("arch", "value", None, "architecture to pull from a multi-arch image (default: this machine's)", "ARCH"),
    Flag("platform", "value", None, "platform os/arch[/variant], e.g. linux/arm64/v8", "PLATFORM"),
    *TLS_FLAGS,
    Flag("compression", "value", None, "squashfs compression of the converted image: zstd (default), gzip, lz4",
         "ALG", choices=("zstd", "gzip", "lz4", "xz", "lzo")),
    Flag("force", short="F", help="download and convert again, and overwrite OUT"),
    Flag("help", short="h", help="show this help"),
]
SYNOPSIS = ("[options] [OUT.sif] REFERENCE",
            "Pull docker://HOST/REPO:TAG, oras://..., oci:DIR[:TAG], oci-archive:FILE or docker-archive:FILE "
            "into the cache (YURT_CACHEDIR, default ~/.cache/yurt) and write OUT.sif (default NAME_TAG.sif).")


def pull_options(values: dict, ctx):
    from yurt.cli.progress import Progress
    from yurt.registry.pull import PullOptions

    arch, variant = values.get("arch"), None
    if values.get("platform"):
        parts = values["platform"].split("/")
        if len(parts) < 2 or parts[0] != "linux":
            raise UsageError(f"bad --platform {values['platform']!r}", "use linux/ARCH[/VARIANT]")
        arch, variant = parts[1], (parts[2] if len(parts) > 2 else None)
    return PullOptions(arch=arch, variant=variant, insecure=values.get("insecure", False),
                       ca_file=values.get("ca_file"), compression=values.get("compression") or "zstd",
                       force=values.get("force", False), quiet=ctx.quiet,
                       progress=Progress(quiet=ctx.quiet))


def options_from_environment(ctx):
    """PullOptions from ``YURT_INSECURE``, ``YURT_ARCH``, ... alone: for pulls that other commands make
    (``exec docker://``, a build's ``Bootstrap: docker``)."""
    values, _ = parse([], FLAGS, stop_at_positional=False)
    return pull_options(values, ctx)


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
    ref = positionals[-1]
    out = positionals[0] if len(positionals) == 2 else default_name(ref)
    if os.path.lexists(out) and not values["force"]:
        raise UsageError(f"{out} already exists", "use --force to overwrite it")
    from yurt.registry.pull import is_pullable, pull

    if not is_pullable(ref):
        raise UsageError(f"cannot pull {ref!r}", "use docker://, oras://, oci:, oci-archive: or docker-archive:")
    result = pull(ref, pull_options(values, ctx))
    tmp = f"{out}.tmp-{os.getpid()}"
    try:
        try:
            os.link(result.sif, tmp)  # cache and output on one file system: no copy
        except OSError:
            shutil.copyfile(result.sif, tmp)
        os.replace(tmp, out)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    if not ctx.quiet:
        how = "from the cache" if result.cached else f"{result.downloaded_bytes} bytes downloaded"
        from yurt.cli.terminal import done

        done(f"{out} ({result.manifest_digest[:19]}, {how})")
    return 0
