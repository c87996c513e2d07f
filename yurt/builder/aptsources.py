"""The host's own package mirror, read from apt's sources: no mirror host is written into yurt.

Sites and CI machines reach Debian (or Ubuntu) through their own mirrors or proxies, and
their apt configuration already names it.  This reads it, for the example in a
``Bootstrap: debootstrap`` error and for the tests and benchmarks that debootstrap a tree.

Both of apt's formats (``sources.list(5)``), in apt's order:

* one-line: ``/etc/apt/sources.list`` and ``sources.list.d/*.list``:
  ``deb [opt=value ...] URI SUITE [COMPONENT ...]``;
* deb822: ``sources.list.d/*.sources``, paragraphs with ``Types:``, ``URIs:``,
  ``Suites:``, ``Components:``, ``Enabled:`` and ``Signed-By:`` fields.

Files apt ignores are ignored too (``foo.list.disabled``, ``foo.sources.bak``, names outside
apt's ``[A-Za-z0-9_.-]``).  Every file is treated as hostile: opened without following a
symlink or blocking on a FIFO, read only if it is a regular file, at most
:data:`MAX_FILE_BYTES`; a line that makes no sense is skipped, never an error.
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

from yurt.errors import YurtError
from yurt.readfile import read_file

MAX_FILE_BYTES = 1 << 20
MAX_FILES = 256
MAX_PER_FIELD = 64  # URIs and Suites of one paragraph: their product is bounded
_NAME = re.compile(r"[A-Za-z0-9_.\-]+\.(list|sources)")
# Methods debootstrap can fetch from (apt's mirror+, tor+, cdrom: are apt's own).
_FETCHABLE = ("http://", "https://", "ftp://", "file:/")
# Keyrings of a distribution's own archive (debian-archive-keyring, ubuntu-keyring): a third-party
# repository that reuses a distribution's suite name ("bookworm main") names its own key instead.
_ARCHIVE_KEYRING = re.compile(r"/usr/share/keyrings/[a-z]+-archive-keyring\.gpg")


class Source(NamedTuple):
    """One repository apt knows: its types, URI, suite and components, and where it was read."""

    types: tuple[str, ...]
    uri: str
    suite: str
    components: tuple[str, ...]
    signed_by: str
    origin: str


class Mirror(NamedTuple):
    """A distribution archive to debootstrap from: ``MirrorURL`` and ``OSVersion``."""

    uri: str
    suite: str
    origin: str


def read_text(path: str, limit: int = MAX_FILE_BYTES) -> str | None:
    """A regular file's text (None: missing, a symlink, not regular, too big, or unreadable): apt's
    files are the host's, looked for by yurt, so a bad one is skipped as apt would, not an error."""
    try:
        data = read_file(path, "", limit, YurtError, nofollow=True)
    except YurtError:
        return None
    return data.decode("utf-8", "replace")


def parse_one_line(text: str, origin: str = "") -> list[Source]:
    """The entries of a one-line format file (``deb [opts] URI SUITE COMPONENT...``)."""
    out = []
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split(None, 1)
        if len(parts) != 2 or parts[0] not in ("deb", "deb-src"):
            continue
        kind, rest = parts
        options: dict[str, str] = {}
        if rest.startswith("["):
            inside, closed, rest = rest[1:].partition("]")
            if not closed:
                continue
            for word in inside.split():
                key, _, value = word.partition("=")
                options[key.lower()] = value
        words = _split_uri(rest.strip())
        if len(words) < 2:
            continue
        out.append(Source((kind,), words[0], words[1], tuple(words[2:]), options.get("signed-by", ""), origin))
    return out


def _split_uri(text: str) -> list[str]:
    """Split on blanks, but keep a bracketed part of the URI whole (``cdrom:[Debian 12 DVD]/``)."""
    words = text.split()
    if words and "[" in words[0]:
        head, closed, tail = text.partition("]")
        if not closed:
            return []
        rest = tail.split()
        if tail[:1].isspace():
            return [head + "]", *rest]
        return [head + "]" + rest[0], *rest[1:]] if rest else [head + "]"]
    return words


def parse_deb822(text: str, origin: str = "") -> list[Source]:
    """The entries of a deb822 ``.sources`` file: one per URI and suite of each enabled paragraph."""
    out = []
    for fields in _paragraphs(text):
        if fields.get("enabled", "yes").strip().lower() in ("no", "false", "0"):
            continue
        types = tuple(t for t in fields.get("types", "").split() if t in ("deb", "deb-src"))
        uris = fields.get("uris", "").split()[:MAX_PER_FIELD]
        suites = fields.get("suites", "").split()[:MAX_PER_FIELD]
        components = tuple(fields.get("components", "").split())
        signed_by = fields.get("signed-by", "").strip()
        if "\n" in signed_by:  # an embedded key, not a path
            signed_by = "(embedded key)"
        for uri in uris if types else ():
            for suite in suites:
                out.append(Source(types, uri, suite, components, signed_by, origin))
    return out


def _paragraphs(text: str) -> list[dict[str, str]]:
    """deb822 paragraphs as ``{lower-case field: value}``; continuation lines joined with newlines."""
    paragraphs: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            if fields:
                paragraphs.append(fields)
            fields, key = {}, None
        elif line[0] in " \t":
            if key is not None:
                fields[key] += "\n" + line.strip()
        else:
            name, colon, value = line.partition(":")
            key = name.strip().lower() if colon and name.strip() and " " not in name.strip() else None
            if key is not None:
                fields[key] = value.strip()
    if fields:
        paragraphs.append(fields)
    return paragraphs


def read_sources(root: str = "/") -> list[Source]:
    """Every repository of the apt configuration under ``root``, in apt's order."""
    etc = os.path.join(root, "etc/apt")
    out = parse_one_line(read_text(os.path.join(etc, "sources.list")) or "", os.path.join(etc, "sources.list"))
    directory = os.path.join(etc, "sources.list.d")
    try:
        names = sorted(n for n in os.listdir(directory) if _NAME.fullmatch(n))[:MAX_FILES]
    except OSError:
        names = []
    for name in names:
        path = os.path.join(directory, name)
        text = read_text(path)
        if text is not None:
            out += parse_deb822(text, path) if name.endswith(".sources") else parse_one_line(text, path)
    return out


def os_release(root: str = "/") -> dict[str, str]:
    """``/etc/os-release`` (or ``/usr/lib/os-release``) as a dict: ``ID``, ``VERSION_CODENAME``, ..."""
    text = None
    for path in ("etc/os-release", "usr/lib/os-release"):  # the first is usually a symlink to the second
        text = read_text(os.path.join(root, path), 64 << 10)
        if text is not None:
            break
    out = {}
    for line in (text or "").splitlines():
        key, eq, value = line.strip().partition("=")
        if eq and re.fullmatch(r"[A-Z0-9_]+", key):
            out[key] = value.strip().strip("\"'")
    return out


def archive_mirror(suites: tuple[str, ...] | list[str], root: str = "/") -> Mirror | None:
    """The distribution archive apt uses for one of ``suites`` (the first suite that has one).

    Only binary (``deb``) entries for exactly that suite (not ``-security`` or ``-updates``)
    with the ``main`` component, fetchable by debootstrap; among them one signed by a
    distribution's archive keyring, then one with apt's default keys, beats a third-party
    repository that happens to use the same suite name (apt's order breaks ties).
    """
    sources = read_sources(root)
    for suite in suites:
        found = [s for s in sources if s.suite == suite and "deb" in s.types and "main" in s.components
                 and s.uri.startswith(_FETCHABLE)]
        found.sort(key=_trust)
        if found:
            return Mirror(found[0].uri, suite, found[0].origin)
    return None


def _trust(source: Source) -> int:
    if _ARCHIVE_KEYRING.fullmatch(source.signed_by):
        return 0
    return 1 if not source.signed_by else 2


def host_mirror(root: str = "/") -> Mirror | None:
    """This host's own distribution archive (its ``VERSION_CODENAME``), if apt names one."""
    codename = os_release(root).get("VERSION_CODENAME")
    return archive_mirror((codename,), root) if codename else None


def debian_mirror(suite: str, root: str = "/") -> Mirror | None:
    """A Debian mirror that serves ``suite``: the host's entry for it, or, on a Debian host, the
    mirror of the host's own release (a Debian mirror carries every release it supports)."""
    suites = [suite]
    release = os_release(root)
    if release.get("ID") == "debian" and release.get("VERSION_CODENAME") not in (None, "", suite):
        suites.append(release["VERSION_CODENAME"])
    found = archive_mirror(suites, root)
    return Mirror(found.uri, suite, found.origin) if found else None
