"""``yurt push IMAGE oras://HOST/REPO:TAG | docker://HOST/REPO:TAG``."""

from __future__ import annotations

from yurt.cli.options import Flag, parse_command
from yurt.cli.pull import TLS_FLAGS
from yurt.errors import UsageError

FLAGS = [
    *TLS_FLAGS,
    Flag("layer-compression", "value", None, "docker:// layer compression: gzip (default) or zstd", "ALG",
         choices=("gzip", "zstd")),
    Flag("help", short="h", help="show this help"),
]
SYNOPSIS = ("[options] IMAGE REFERENCE",
            "Push a SIF as an ORAS artifact (oras://, as Apptainer does) or a SIF or directory as an OCI image "
            "(docker://) that podman, skopeo and docker can pull.")


def main(command: str, argv: list[str], ctx) -> int:
    parsed = parse_command(command, argv, FLAGS, *SYNOPSIS, stop_at_positional=False)
    if parsed is None:
        return 0
    values, positionals = parsed
    if len(positionals) != 2:
        raise UsageError("push needs an image and a reference", f"yurt push {SYNOPSIS[0]}")
    image, ref = positionals
    if values["authfile"]:
        import os

        os.environ["REGISTRY_AUTH_FILE"] = os.path.abspath(values["authfile"])
    if not ref.startswith(("oras://", "docker://")):
        raise UsageError(f"cannot push to {ref!r}", "use oras://HOST/REPO:TAG or docker://HOST/REPO:TAG")
    from yurt.cli.terminal import done, status
    from yurt.registry.push import push

    with status(f"pushing {image} to {ref}", quiet=ctx.quiet):
        digest, counts = push(image, ref, insecure=values["insecure"], ca_file=values["ca_file"],
                              layer_compression=values["layer_compression"] or "gzip")
    if not ctx.quiet:
        done(f"pushed {image} to {ref} ({digest}; blobs: {counts['uploaded']} uploaded, "
             f"{counts['mounted']} mounted from another repository, {counts['present']} already there)")
    return 0
