"""A client for the OCI distribution API (``/v2/``): manifests, blobs, uploads, tags.

One :class:`RegistryClient` talks to one registry host.  It is safe to share
between threads (``yurt pull`` downloads layers in parallel).  This module
holds what the client does with a registry, the blob and manifest operations;
how each request gets there is in its bases:

* **Transport** (:mod:`.transport`): HTTPS with certificate verification, or
  for ``insecure=True`` unverified TLS or plain HTTP; ``5xx``, ``429``, timeouts
  and dropped connections retried with exponential backoff; every failure one
  :class:`~yurt.registry.errors.RegistryError` line.
* **Auth** (:mod:`.challenge`): anonymous first; a ``401`` challenge is
  answered with HTTP Basic or a bearer token from the challenge's ``realm``
  (the credentials themselves come from :mod:`.auth`).
* **Integrity**: manifests fetched by digest and every blob are verified
  against their digest while they stream; blobs land in place only when
  complete and verified (temp file beside the destination, fsync, rename).
* **Robustness**: an interrupted blob download resumes with
  ``Range: bytes=N-`` (or starts over when the server ignores ranges).

Choosing a platform from an image index is :mod:`.platforms`.  This module and
:mod:`.transport` are the only ones of yurt that import ``httpx``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import ssl
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

from yurt.registry.errors import RegistryError
from yurt.registry.reference import is_digest, normalize_registry, validate_digest
from yurt.registry.transport import READ_SIZE, USER_AGENT, RegistryTransport, _ssl_context
from yurt.store.atomic import fsync_path

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DEFAULT_ACCEPT = (OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST)
INDEX_MEDIA_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
MANIFEST_MEDIA_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)

CHUNK_SIZE = 16 << 20  # blob upload PATCH size

ProgressCallback = Callable[[int, int | None], None]


def _file_mode() -> int:
    """0666 minus this process's umask (read without changing it: other threads may create files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o644


def _digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def _next_link(header: str | None) -> str | None:
    """The target of ``Link: <url>; rel="next"``."""
    if not header:
        return None
    for part in header.split(","):
        m = re.match(r'\s*<([^>]*)>\s*;(.*)', part)
        if m and re.search(r'rel\s*=\s*"?next"?', m.group(2)):
            return m.group(1)
    return None


def _pull_scope(repo: str) -> tuple[str, ...]:
    return (f"repository:{repo}:pull",)


def _push_scope(repo: str) -> tuple[str, ...]:
    return (f"repository:{repo}:pull,push",)


# --------------------------------------------------------------------------- client


class RegistryClient(RegistryTransport):
    """Talks to one registry (``host[:port]``); see the module docstring."""

    def __init__(self, registry: str, *, insecure: bool = False, ca_file: str | os.PathLike[str] | None = None,
                 credentials: tuple[str, str] | None = None, timeout: float = 30, retries: int = 4,
                 backoff: float = 0.5) -> None:
        self.registry = normalize_registry(registry)
        self.insecure = insecure
        self.ca_file = ca_file
        self.credentials = tuple(credentials) if credentials else None
        self.timeout = timeout
        self.retries = max(0, int(retries))
        self.backoff = backoff
        self.chunk_size = CHUNK_SIZE
        self._scheme = "https"
        self._scheme_known = not insecure
        self._lock = threading.RLock()
        self._tokens: dict[str, tuple[str, float]] = {}
        self._bearer: dict[str, str] | None = None  # realm/service of the registry's bearer challenge
        self._use_basic = False
        verify: ssl.SSLContext | bool = False if insecure else _ssl_context(ca_file)
        self._http = httpx.Client(verify=verify, timeout=httpx.Timeout(timeout), follow_redirects=True,
                                  headers={"User-Agent": USER_AGENT})

    # -- life cycle

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RegistryClient({self.registry!r}, insecure={self.insecure})"

    # -- pull side

    def get_manifest(self, repo: str, ref: str, accept: str | Sequence[str] = DEFAULT_ACCEPT
                     ) -> tuple[bytes, str, str]:
        """``(body, media_type, digest)`` of the manifest (or index) ``repo:ref``.

        When ``ref`` is a digest the body is verified against it; otherwise the
        digest is the body's sha256, cross-checked with ``Docker-Content-Digest``.
        """
        by_digest = is_digest(ref)
        if by_digest:
            validate_digest(ref)
        accept_header = accept if isinstance(accept, str) else ", ".join(accept)
        what = f"manifest {repo}{'@' if by_digest else ':'}{ref}"
        response, body = self._get_document(self._url(f"/v2/{repo}/manifests/{ref}"), _pull_scope(repo),
                                            {"Accept": accept_header}, what)
        media_type = response.headers.get("content-type", "").split(";", 1)[0].strip()
        if media_type in ("", "application/json", "text/plain", "application/octet-stream"):
            try:
                doc = json.loads(body)
                media_type = doc.get("mediaType") or media_type if isinstance(doc, dict) else media_type
            except (ValueError, RecursionError):
                pass
        if by_digest:
            algorithm = ref.split(":", 1)[0]
            actual = _digest_of(body, algorithm)
            if actual != ref:
                raise RegistryError(f"digest mismatch for {ref}: the registry sent a manifest with digest {actual}")
            return body, media_type, ref
        digest = _digest_of(body)
        claimed = response.headers.get("docker-content-digest", "")
        if claimed.startswith("sha256:") and claimed != digest and media_type != DOCKER_MANIFEST_V1_SIGNED:
            raise RegistryError(f"digest mismatch for {what}: the registry says {claimed}, the content is {digest}")
        return body, media_type, digest

    def fetch_blob(self, repo: str, digest: str, size: int | None, dest_path: str | os.PathLike[str],
                   progress: ProgressCallback | None = None) -> Path:
        """Download blob ``digest`` of ``repo`` to ``dest_path``, verified; returns the path.

        The bytes go to a temp file beside ``dest_path`` and are checked against
        ``size`` and ``digest`` as they arrive; only a complete, verified blob
        is renamed into place.  ``progress(done, total)`` is called as bytes
        arrive.  A dropped download resumes where it stopped.
        """
        validate_digest(digest)
        algorithm, _, expected = digest.partition(":")
        dest = Path(dest_path)
        url = self._url(f"/v2/{repo}/blobs/{digest}")
        scopes = _pull_scope(repo)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        done_ok = False
        try:
            os.fchmod(fd, _file_mode())  # mkstemp's 0600 is not what a downloaded file should have
            with os.fdopen(fd, "wb") as out:
                hasher = hashlib.new(algorithm)
                done = 0
                attempt = 0
                while True:
                    headers = {"Accept-Encoding": "identity"}
                    if done:
                        headers["Range"] = f"bytes={done}-"
                    response = self._send("GET", url, scopes=scopes, headers=headers, stream=True)
                    try:
                        if response.status_code == 206 and done:
                            m = re.match(r"bytes\s+(\d+)-", response.headers.get("content-range", ""))
                            if not m or int(m.group(1)) != done:
                                raise RegistryError(f"registry {self.registry} resumed {digest} at the wrong offset",
                                                    retryable=False)
                        elif response.status_code == 200:
                            if done:  # the server ignored the Range: start over
                                out.seek(0)
                                out.truncate()
                                hasher = hashlib.new(algorithm)
                                done = 0
                        else:
                            raise self._error(response, f"blob {repo}@{digest}")
                        total = size
                        if total is None and response.headers.get("content-length", "").isdigit():
                            total = done + int(response.headers["content-length"])
                        for chunk in response.iter_bytes(READ_SIZE):
                            if size is not None and done + len(chunk) > size:
                                raise RegistryError(f"digest mismatch for {digest}: the registry sent more than "
                                                    f"the {size} bytes the manifest lists")
                            out.write(chunk)
                            hasher.update(chunk)
                            done += len(chunk)
                            if progress is not None:
                                progress(done, total)
                    except httpx.TransportError as exc:
                        if self._backoff(attempt, exc):
                            attempt += 1
                            continue
                        raise self._transport_error(exc)
                    finally:
                        response.close()
                    if size is not None and done < size:
                        if attempt < self.retries:
                            self._sleep(attempt)
                            attempt += 1
                            continue
                        raise RegistryError(f"download of {digest} from {self.registry} stopped at {done} of "
                                            f"{size} bytes", retryable=True)
                    break
                actual = hasher.hexdigest()
                if actual != expected:
                    raise RegistryError(f"digest mismatch for {digest}: the registry sent {algorithm}:{actual}")
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp_name, dest)
            done_ok = True
        finally:
            if not done_ok:
                try:
                    os.unlink(tmp_name)
                except FileNotFoundError:
                    pass
        fsync_path(dest.parent)
        return dest

    def list_tags(self, repo: str) -> list[str]:
        """Every tag of ``repo``, following ``Link: <...>; rel="next"`` pages."""
        tags: list[str] = []
        url: str | None = self._url(f"/v2/{repo}/tags/list")
        while url:
            response, body = self._get_document(url, _pull_scope(repo), {"Accept": "application/json"},
                                                f"tags of {repo}")
            try:
                doc = json.loads(body)
            except (ValueError, RecursionError):
                doc = None
            if not isinstance(doc, dict):
                raise RegistryError(f"registry {self.registry}: the tag list of {repo} is not a JSON object")
            tags.extend(t for t in (doc.get("tags") or []) if isinstance(t, str))
            link = _next_link(response.headers.get("link"))
            url = str(response.url.join(link)) if link else None
        return tags

    def check_login(self) -> None:
        """Make sure the registry accepts our credentials (``GET /v2/``); raises :class:`RegistryError`."""
        response = self._send("GET", self._url("/v2/"))
        try:
            if response.status_code != 200:
                raise self._error(response, "API version check")
        finally:
            response.close()

    # -- push side

    def blob_exists(self, repo: str, digest: str) -> bool:
        """Whether ``repo`` has blob ``digest`` (``HEAD``)."""
        validate_digest(digest)
        response = self._send("HEAD", self._url(f"/v2/{repo}/blobs/{digest}"), scopes=_pull_scope(repo))
        response.close()
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise self._error(response, f"blob {repo}@{digest}")

    def upload_blob(self, repo: str, digest: str, path: str | os.PathLike[str], size: int | None = None,
                    mount_from: str | None = None) -> str:
        """Upload the file ``path`` as blob ``digest`` of ``repo``.

        With ``mount_from`` (another repository of the same registry) a
        cross-repository mount is tried first.  Otherwise the data goes in
        ``chunk_size`` PATCH requests, each to the newest upload ``Location``,
        and a final ``PUT ?digest=``.  A failed upload is started over (up to
        ``retries`` times).  Returns ``"mounted"`` or ``"uploaded"``.
        """
        validate_digest(digest)
        path = Path(path)
        actual = path.stat().st_size
        if size is None:
            size = actual
        elif actual != size:
            raise RegistryError(f"cannot upload {path}: it has {actual} bytes, the manifest lists {size}")
        scopes = _push_scope(repo) + (_pull_scope(mount_from) if mount_from and mount_from != repo else ())
        attempt = 0
        while True:
            try:
                return self._upload_once(repo, digest, path, size, mount_from, scopes)
            except RegistryError as e:
                if not e.retryable or attempt >= self.retries:
                    raise
                self._sleep(attempt)
                attempt += 1

    def _location(self, response: httpx.Response, what: str) -> httpx.URL:
        location = response.headers.get("location")
        if not location:
            raise RegistryError(f"registry {self.registry} sent no upload Location ({what})")
        return response.url.join(location)

    def _upload_once(self, repo: str, digest: str, path: Path, size: int, mount_from: str | None,
                     scopes: tuple[str, ...]) -> str:
        what = f"upload of {digest} to {repo}"
        params = {"mount": digest, "from": mount_from} if mount_from else None
        response = self._send("POST", self._url(f"/v2/{repo}/blobs/uploads/"), scopes=scopes, params=params,
                              content=b"")
        if response.status_code == 201 and mount_from:
            response.close()
            return "mounted"
        if response.status_code != 202:
            raise self._error(response, what)
        response.close()
        location = self._location(response, what)
        with open(path, "rb") as f:
            offset = 0
            while offset < size:
                chunk = f.read(min(self.chunk_size, size - offset))
                if not chunk:
                    raise RegistryError(f"cannot upload {path}: it shrank to {offset} bytes during the upload")
                headers = {"Content-Type": "application/octet-stream",
                           "Content-Range": f"{offset}-{offset + len(chunk) - 1}"}
                response = self._send("PATCH", location, scopes=scopes, headers=headers, content=chunk,
                                      retry=False)
                if response.status_code != 202:
                    raise self._error(response, what)
                response.close()
                location = self._location(response, what)
                offset += len(chunk)
        location = location.copy_merge_params({"digest": digest})
        response = self._send("PUT", location, scopes=scopes, headers={"Content-Type": "application/octet-stream"},
                              content=b"", retry=False)
        if response.status_code not in (201, 204):
            raise self._error(response, what)
        response.close()
        claimed = response.headers.get("docker-content-digest")
        if claimed and claimed != digest:
            raise RegistryError(f"digest mismatch for {digest}: the registry stored the upload as {claimed}")
        return "uploaded"

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        """Store manifest ``data`` as ``repo:ref`` (a tag or its digest); returns its digest."""
        digest = _digest_of(data)
        if is_digest(ref):
            validate_digest(ref)
            expected = _digest_of(data, ref.split(":", 1)[0])
            if expected != ref:
                raise RegistryError(f"digest mismatch for {ref}: the manifest's digest is {expected}")
        response = self._send("PUT", self._url(f"/v2/{repo}/manifests/{ref}"), scopes=_push_scope(repo),
                              headers={"Content-Type": media_type}, content=data)
        if response.status_code not in (200, 201):
            raise self._error(response, f"manifest {repo}:{ref}")
        response.close()
        claimed = response.headers.get("docker-content-digest")
        if claimed and claimed.startswith("sha256:") and claimed != digest:
            raise RegistryError(f"digest mismatch for manifest {repo}:{ref}: the registry says {claimed}, "
                                f"yurt computed {digest}")
        return digest
