"""Which registries the site lets yurt talk to (``allowed_registries`` in ``/etc/yurt/yurt.toml``).

One check for everything that reaches a registry through a reference: ``yurt pull``,
``yurt push``, ``yurt exec docker://...`` and the ``docker``/``oras`` bootstrap of ``yurt build``
(they all get their client from :func:`yurt.registry.fetch.client_for`).  It runs before any
network traffic, so a refused registry is never contacted.
"""

from __future__ import annotations

from yurt.errors import PolicyError
from yurt.registry.reference import Reference, normalize_registry


def allows(allowed: tuple[str, ...], ref: Reference) -> bool:
    """Whether an ``allowed_registries`` list admits ``ref``.

    An entry is ``host[:port]`` (the whole registry) or ``host[:port]/prefix`` (repositories equal to
    ``prefix`` or below it, component by component: ``docker.io/library`` admits ``library/debian``
    but not ``library-x/y``).  Hosts compare case-insensitively, Docker Hub aliases as one.
    """
    registry = normalize_registry(ref.registry).lower()
    for entry in allowed:
        host, _, prefix = entry.partition("/")
        if normalize_registry(host).lower() != registry:
            continue
        prefix = prefix.strip("/")
        if not prefix or ref.repository == prefix or ref.repository.startswith(prefix + "/"):
            return True
    return False


def check_reference(ref: Reference, config=None) -> None:
    """Raise :class:`PolicyError` unless the site allows ``ref``'s registry (and repository)."""
    if config is None:
        from yurt.config import load

        config = load()
    allowed = config.allowed_registries
    if allowed is None or allows(allowed, ref):
        return
    listed = ", ".join(allowed) or "none"
    raise PolicyError(f"registry {ref.registry} ({ref}) is not allowed by the site (allowed: {listed})",
                      f"allowed_registries in {config.site_file or '/etc/yurt/yurt.toml'}")
