"""An image or a reference (``docker://``, ``oras://``, ``oci:``, ``oci-archive:``, ``docker-archive:``, a SIF)
built into a SIF or sandbox, as ``apptainer build OUT SOURCE`` and ``apptainer pull --sandbox`` make them: a
one-line definition file (``Bootstrap: docker`` / ``From: REF``) run by yurt's builder, so the result is what a
recipe with that header gives.  Shared by ``yurt build`` and ``yurt pull --sandbox``.
"""

from __future__ import annotations

import os

URI_AGENTS = {"docker://": "docker", "oras://": "oras", "oci:": "oci", "oci-archive:": "oci-archive",
              "docker-archive:": "docker-archive"}


def uri_of(source: str) -> str | None:
    """The transport prefix ``source`` starts with (a key of :data:`URI_AGENTS`), or None."""
    return next((p for p in URI_AGENTS if source.startswith(p)), None)


def is_image(path: str) -> bool:
    """A SIF or a squashfs file (by its magic), not a recipe."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return False
    from yurt.image.source import SIF_MAGIC, SIF_MAGIC_OFFSET

    return head[:4] == b"hsqs" or head[SIF_MAGIC_OFFSET:SIF_MAGIC_OFFSET + len(SIF_MAGIC)] == SIF_MAGIC


def build_from(source: str, out: str, *, sandbox: bool, pull_options, **build_options) -> None:
    """Build ``out`` from a reference or an image file ``source`` (``build_options``: those of
    :func:`yurt.builder.executor.build`)."""
    import tempfile

    from yurt.builder import executor

    uri = uri_of(source)
    agent = URI_AGENTS[uri] if uri else "localimage"
    ref = source[len(uri):] if uri else os.path.abspath(source)
    if agent in ("oci", "oci-archive", "docker-archive"):
        ref = os.path.abspath(ref)
    with tempfile.TemporaryDirectory(prefix="yurt-build-") as tmp:
        recipe = os.path.join(tmp, "from-source.def")
        with open(recipe, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(f"Bootstrap: {agent}\nFrom: {ref}\n")
        executor.build(recipe, out, sandbox=sandbox, pull_options=pull_options, **build_options)
