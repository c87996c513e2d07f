"""Read OCI images from local sources, for :func:`yurt.image.tar2sqfs.layers_to_sif`.

Three sources, named as skopeo and Apptainer name them:

``oci:DIR[:TAG]``
    an OCI image layout directory (``oci-layout``, ``index.json``, ``blobs/<alg>/<hex>``).
    TAG is matched against the ``org.opencontainers.image.ref.name`` annotation (or
    containerd's ``io.containerd.image.name``); without TAG the index must list one image.
``oci-archive:FILE[:TAG]``
    a tar of such a layout.
``docker-archive:FILE[:REF]``
    ``docker save`` output: ``manifest.json`` listing each image's config and layer paths.
    REF picks an image by one of its RepoTags (``busybox:latest``) or by position (``@0``).

This module parses the source string and hands it to its reader: :mod:`yurt.image.oci_layout`
(the first two, with platform selection in image indexes) or :mod:`yurt.image.docker_archive`;
both read their files, and check every blob against its digest, through
:mod:`yurt.image.oci_blobs`.  Nothing is extracted, and a mismatch is an
:class:`~yurt.errors.ImageError`.
"""

from __future__ import annotations

import os

from yurt.errors import ImageError
from yurt.image.docker_archive import read_docker_archive
from yurt.image.oci_layout import LocalImage, read_oci_archive, read_oci_layout

_TRANSPORTS = ("oci-archive", "docker-archive", "oci")


# --- source strings ------------------------------------------------------------------------


def parse_source(source: str) -> tuple[str, str, str | None]:
    """Split ``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]`` or ``docker-archive:FILE[:REF]``.

    A path that exists is taken whole, so paths with colons work; otherwise the tag is what
    follows the last colon (``oci``) or the first colon after an existing file (``docker-archive``,
    whose references contain colons themselves).
    """
    for transport in _TRANSPORTS:
        if source.startswith(transport + ":"):
            rest = source[len(transport) + 1:]
            break
    else:
        raise ImageError(f"unknown image source {source!r}",
                         "use oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker-archive:FILE[:REF]")
    if not rest:
        raise ImageError(f"image source {source!r} names no path")
    if os.path.exists(rest) or ":" not in rest:
        return transport, rest, None
    if transport == "docker-archive":
        pos = rest.find(":")
        while pos >= 0:
            if os.path.exists(rest[:pos]):
                return transport, rest[:pos], rest[pos + 1:] or None
            pos = rest.find(":", pos + 1)
        return transport, rest, None
    path, _, tag = rest.rpartition(":")
    if "/" in tag:  # a colon inside the path, not a tag
        return transport, rest, None
    return transport, path, tag or None


def open_local(source: str, *, platform: str | None = None, tmpdir: str | None = None,
               max_bytes: int | None = None) -> LocalImage:
    """Read an image from ``oci:``, ``oci-archive:`` or ``docker-archive:`` ``source``."""
    transport, path, ref = parse_source(source)
    if not os.path.exists(path):
        raise ImageError(f"{path}: no such file or directory")
    if transport == "oci":
        return read_oci_layout(path, ref, platform=platform)
    if transport == "oci-archive":
        return read_oci_archive(path, ref, platform=platform, tmpdir=tmpdir, max_bytes=max_bytes)
    return read_docker_archive(path, ref, tmpdir=tmpdir, max_bytes=max_bytes)
