"""Image references: ``docker://[host[:port]/]repo[:tag|@digest]``, ``oras://host/repo:tag``.

:func:`parse_reference` turns the text a user types into a :class:`Reference`
with every default filled in, the way ``docker pull`` does: a first path
component is a registry host only when it contains ``.`` or ``:`` or is
``localhost``; otherwise the image is on Docker Hub (``registry-1.docker.io``)
and a one-component name gets the ``library/`` prefix.  Names, tags and
digests are checked against the grammar of the OCI distribution spec, so a
bad reference fails here with one clear line instead of as a registry 404.
"""

from __future__ import annotations

import re

from yurt.errors import UsageError
from yurt.record import Record

DOCKER_HUB = "registry-1.docker.io"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})
TRANSPORTS = ("docker", "oras")

# OCI distribution spec: <name> is path components joined by "/", each
# [a-z0-9]+ separated by ".", "_", "__" or runs of "-".
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
REPOSITORY_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# OCI image spec: algorithm ([a-z0-9]+ joined by + . _ -) ":" encoded.
DIGEST_RE = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[A-Za-z0-9=_-]+")
DIGEST_HEX_LENGTHS = {"sha256": 64, "sha512": 128}
_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
HOST_RE = re.compile(rf"(?:{_HOST_LABEL}(?:\.{_HOST_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?")
MAX_REPOSITORY = 255


class Reference(Record):
    """A fully qualified image reference.

    ``tag`` is ``"latest"`` when neither a tag nor a digest was given; with a
    digest it is ``None`` unless the text named both (``repo:tag@sha256:...``,
    where the digest wins).
    """

    __slots__ = ("transport", "registry", "repository", "tag", "digest")
    _defaults = {"transport": "docker", "tag": None, "digest": None}
    transport: str
    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def ref(self) -> str:
        """What goes after ``/manifests/``: the digest when there is one, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def name(self) -> str:
        """``registry/repository`` without transport, tag or digest."""
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        text = f"{self.transport}://{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def validate_digest(digest: str, what: str = "digest") -> str:
    """Return ``digest`` if it is a well-formed ``algorithm:hex`` digest yurt can verify, else raise."""
    if not DIGEST_RE.fullmatch(digest):
        raise UsageError(f"invalid {what} {digest!r}: expected algorithm:hex, e.g. sha256:<64 hex digits>")
    algorithm, _, encoded = digest.partition(":")
    length = DIGEST_HEX_LENGTHS.get(algorithm)
    if length is None:
        raise UsageError(f"unsupported {what} algorithm {algorithm!r} in {digest!r}: use sha256 or sha512")
    if len(encoded) != length or not re.fullmatch(r"[0-9a-f]+", encoded):
        raise UsageError(f"invalid {what} {digest!r}: {algorithm} needs {length} lower-case hex digits")
    return digest


def is_digest(text: str) -> bool:
    """Whether ``text`` looks like a digest (``algo:encoded``) rather than a tag."""
    return ":" in text and DIGEST_RE.fullmatch(text) is not None


def _looks_like_host(component: str) -> bool:
    return "." in component or ":" in component or component == "localhost"


def normalize_registry(host: str) -> str:
    """Registry host as yurt keys it: Docker Hub aliases become ``registry-1.docker.io``."""
    host = host.strip()
    for prefix in ("https://", "http://"):
        if host.startswith(prefix):
            host = host[len(prefix):]
    host = host.split("/", 1)[0]
    return DOCKER_HUB if host.lower() in _HUB_ALIASES else host


def parse_reference(text: str, default_transport: str = "docker") -> Reference:
    """Parse ``[transport://][host[:port]/]repo[:tag][@digest]`` into a :class:`Reference`.

    Raises :class:`~yurt.errors.UsageError` with a one-line reason for anything
    the distribution spec would not accept.
    """
    if not isinstance(text, str) or not text.strip():
        raise UsageError("empty image reference")
    original = text
    if text != text.strip() or any(c.isspace() for c in text):
        raise UsageError(f"invalid image reference {original!r}: it contains white space")
    transport = default_transport
    if "://" in text:
        transport, text = text.split("://", 1)
        if transport not in TRANSPORTS:
            raise UsageError(f"unsupported transport {transport + '://'!r} in {original!r}",
                             "use docker:// or oras://")
    if not text:
        raise UsageError(f"invalid image reference {original!r}: no repository")

    digest = None
    if "@" in text:
        text, digest = text.split("@", 1)
        validate_digest(digest, "digest")

    registry = None
    first, sep, rest = text.partition("/")
    if sep and _looks_like_host(first):
        registry, text = first, rest
        if not HOST_RE.fullmatch(registry):
            raise UsageError(f"invalid registry host {registry!r} in {original!r}")
        port = registry.rsplit(":", 1)[1] if ":" in registry and not registry.endswith("]") else None
        if port is not None and not 0 < int(port) < 65536:
            raise UsageError(f"invalid port {port} in {original!r}")
    elif transport == "oras":
        raise UsageError(f"invalid oras reference {original!r}: name the registry (oras://HOST/REPO:TAG)")

    tag = None
    last_slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > last_slash:
        text, tag = text[:colon], text[colon + 1:]
        if not TAG_RE.fullmatch(tag):
            raise UsageError(f"invalid tag {tag!r} in {original!r}: use letters, digits, '_', '.' and '-' "
                             "(not first), at most 128 characters")

    repository = text
    if not repository:
        raise UsageError(f"invalid image reference {original!r}: no repository")
    if registry is None:
        registry = DOCKER_HUB
    else:
        registry = normalize_registry(registry)
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if not REPOSITORY_RE.fullmatch(repository):
        why = "must be lower case" if REPOSITORY_RE.fullmatch(repository.lower()) else (
            "use lower-case letters, digits and single '.', '_', '__' or '-' between them, '/' between components")
        raise UsageError(f"invalid repository name {repository!r} in {original!r}: {why}")
    if len(repository) > MAX_REPOSITORY:
        raise UsageError(f"invalid repository name in {original!r}: longer than {MAX_REPOSITORY} characters")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(transport=transport, registry=registry, repository=repository, tag=tag, digest=digest)
