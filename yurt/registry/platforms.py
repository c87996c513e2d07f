"""Choosing an image for this machine from an image index (or Docker manifest list).

Pure functions on the index document, no network: :mod:`.pull` calls
:func:`resolve_platform` between fetching the index and fetching the manifest.
"""

from __future__ import annotations

import json
import os

from yurt.errors import ImageError

_GO_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "ppc64le": "ppc64le",
            "s390x": "s390x", "riscv64": "riscv64", "i386": "386", "i686": "386", "loongarch64": "loong64"}


def host_platform() -> tuple[str, str, str | None]:
    """``(os, architecture, variant)`` of this machine in OCI/Go terms, e.g. ``("linux", "arm64", "v8")``."""
    machine = os.uname().machine
    if machine.startswith("armv") and machine[4:5].isdigit():  # armv7l, armv6l
        return "linux", "arm", "v" + machine[4]
    arch = _GO_ARCH.get(machine, machine)
    return "linux", arch, "v8" if arch == "arm64" else None


def _norm_variant(arch: str, variant: str | None) -> str | None:
    """Variants that mean the same: arm64 without one is v8, amd64 without one is v1."""
    if not variant:
        return {"arm64": "v8", "amd64": "v1"}.get(arch)
    return variant


def _platform_text(platform: dict) -> str:
    parts = [str(platform.get("os", "?")), str(platform.get("architecture", "?"))]
    if platform.get("variant"):
        parts.append(str(platform["variant"]))
    return "/".join(parts)


def resolve_platform(index_doc: dict | bytes | str, os: str = "linux", arch: str | None = None,
                     variant: str | None = None) -> dict:
    """The descriptor of the image for ``os/arch[/variant]`` in an image index (or Docker manifest list).

    ``arch`` defaults to this machine's.  Without ``variant`` an entry with
    this machine's variant is preferred, then the first of the architecture.
    Attestation manifests (``unknown/unknown``) are never chosen.  Raises
    :class:`~yurt.errors.ImageError` naming the platforms the index has.
    """
    if isinstance(index_doc, (bytes, str)):
        try:
            index_doc = json.loads(index_doc)
        except (ValueError, RecursionError):
            raise ImageError("the image index is not valid JSON")
    manifests = index_doc.get("manifests") if isinstance(index_doc, dict) else None
    if not isinstance(manifests, list):
        raise ImageError("the image index has no 'manifests' list")
    prefer_variant = variant
    if arch is None:
        _, arch, host_variant = host_platform()
        prefer_variant = variant or host_variant
    want_os = os
    candidates: list[dict] = []
    available: list[str] = []
    for desc in manifests:
        if not isinstance(desc, dict) or "digest" not in desc:
            continue
        platform = desc.get("platform") or {}
        annotations = desc.get("annotations") or {}
        if annotations.get("vnd.docker.reference.type") == "attestation-manifest" or platform.get("os") == "unknown":
            continue
        if platform:
            available.append(_platform_text(platform))
        if platform.get("os") == want_os and platform.get("architecture") == arch:
            candidates.append(desc)
    if variant:
        wanted = _norm_variant(arch, variant)
        candidates = [d for d in candidates if _norm_variant(arch, d["platform"].get("variant")) == wanted]
    elif len(candidates) > 1 and prefer_variant:
        wanted = _norm_variant(arch, prefer_variant)
        exact = [d for d in candidates if _norm_variant(arch, d["platform"].get("variant")) == wanted]
        candidates = exact or candidates
    if not candidates:
        want = "/".join(p for p in (want_os, arch, variant) if p)
        have = ", ".join(dict.fromkeys(available)) or "none with a platform"
        raise ImageError(f"the image has no {want} variant; it has: {have}", "choose one with --arch")
    return candidates[0]
