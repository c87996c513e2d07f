"""A client for the OCI distribution API (``/v2/``): manifests, blobs, uploads, tags.

One :class:`RegistryClient` talks to one registry host.  It is safe to share
between threads (``yurt pull`` downloads layers in parallel).

* **Transport**: HTTPS with certificate verification against the system's CA
  store (plus ``ca_file`` when given).  ``insecure=True`` means what it means
  for Docker: TLS without verification, or plain HTTP when the registry does
  not speak TLS at all.
* **Auth**: anonymous first; a ``401`` challenge is answered with HTTP Basic
  (``WWW-Authenticate: Basic``) or a bearer token fetched from the challenge's
  ``realm`` for the request's scope (``Bearer``, the Docker token protocol),
  sending the credentials, if any, to the token server.  Tokens are cached per
  scope until they expire; once the registry has asked for tokens, later scopes
  are fetched up front instead of after another ``401``.
* **Integrity**: manifests fetched by digest and every blob are verified
  against their digest while they stream; blobs land in place only when
  complete and verified (temp file beside the destination, fsync, rename).
* **Robustness**: ``5xx``, ``429``, timeouts and dropped connections are
  retried with exponential backoff; an interrupted blob download resumes with
  ``Range: bytes=N-`` (or starts over when the server ignores ranges).
* **Errors**: everything ends as one :class:`RegistryError` line, built from
  the registry's ``{"errors": [{"code", "message"}]}`` body when it sent one.

This is the only module of yurt that imports ``httpx``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import httpx

from yurt import __version__
from yurt.errors import ImageError, YurtError
from yurt.registry.reference import is_digest, normalize_registry, validate_digest
from yurt.store.atomic import fsync_path

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DEFAULT_ACCEPT = (OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST)
INDEX_MEDIA_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
MANIFEST_MEDIA_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)

MAX_MANIFEST_SIZE = 4 << 20  # what containerd accepts
CHUNK_SIZE = 16 << 20  # blob upload PATCH size
READ_SIZE = 1 << 20
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_BACKOFF = 30.0
USER_AGENT = f"yurt/{__version__}"

ProgressCallback = Callable[[int, int | None], None]


class RegistryError(YurtError):
    """A registry operation failed (HTTP error, auth, TLS, network, or content that fails verification).

    ``status`` is the HTTP status when there was a response, ``codes`` the
    registry's error codes (``MANIFEST_UNKNOWN``, ...), ``retryable`` whether
    trying again might help.
    """

    def __init__(self, message: str, hint: str | None = None, *, status: int | None = None,
                 codes: Sequence[str] = (), retryable: bool = False) -> None:
        super().__init__(message, hint)
        self.status = status
        self.codes = list(codes)
        self.retryable = retryable


# --------------------------------------------------------------------------- platforms

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


# --------------------------------------------------------------------------- helpers


def _ssl_context(ca_file: str | os.PathLike[str] | None) -> ssl.SSLContext:
    """The system's CA store (certifi's when the system has none), plus ``ca_file``."""
    ctx = ssl.create_default_context()
    if not ctx.get_ca_certs():
        paths = ssl.get_default_verify_paths()
        capath_empty = not (paths.capath and os.path.isdir(paths.capath) and os.listdir(paths.capath))
        if capath_empty:
            try:
                import certifi  # httpx depends on it

                ctx.load_verify_locations(cafile=certifi.where())
            except (ImportError, OSError):
                pass
    if ca_file is not None:
        from yurt.readfile import MIB, read_file

        # Read here, not by OpenSSL: its fopen() waits forever on a FIFO and reads /dev/zero to the end.
        path = os.fspath(ca_file)
        data = read_file(path, "CA file", 4 * MIB, RegistryError)
        try:
            ctx.load_verify_locations(cadata=data.decode("ascii") if b"-----BEGIN" in data else data)
        except (ValueError, ssl.SSLError) as e:  # not ASCII PEM, or not a certificate
            raise RegistryError(f"cannot load CA file {path}: {e}", "give PEM or DER certificates")
    return ctx


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


def _exception_chain(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo.extend((e.__cause__, e.__context__))


def _is_refused(exc: BaseException) -> bool:
    return any(isinstance(e, ConnectionRefusedError) or "connection refused" in str(e).lower()
               for e in _exception_chain(exc))


def _ssl_failure(exc: BaseException) -> ssl.SSLError | None:
    for e in _exception_chain(exc):
        if isinstance(e, ssl.SSLError):
            return e
    return None


def _retryable(exc: httpx.TransportError) -> bool:
    if isinstance(exc, (httpx.TimeoutException, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)):
        return True
    if isinstance(exc, httpx.ConnectError):
        if _is_refused(exc) or _ssl_failure(exc) is not None:
            return False
        return not any(isinstance(e, socket.gaierror) for e in _exception_chain(exc))
    return False


_CHALLENGE_PARAM = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*,?')


def parse_challenge(header: str) -> tuple[str, dict[str, str]] | None:
    """``'Bearer realm="r",service="s",scope="a:b:pull,push"'`` -> ``("bearer", {...})``."""
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        m = _CHALLENGE_PARAM.match(rest, pos)
        if not m or m.end() == pos:
            break
        value = m.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[m.group(1).lower()] = value
        pos = m.end()
    return scheme.lower(), params


def _errors_text(errors: list[tuple[str, str]]) -> str:
    return "; ".join(f"{code}: {message}" if message else code for code, message in errors)


def _registry_errors(body: bytes) -> list[tuple[str, str]]:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return []
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errors, list):
        return []
    result = []
    for err in errors:
        if isinstance(err, dict):
            code = str(err.get("code") or "UNKNOWN")
            message = " ".join(str(err.get("message") or "").split())
            result.append((code, message))
    return result


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


class RegistryClient:
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

    # -- URLs

    @property
    def base_url(self) -> str:
        """``https://host`` or, for an insecure registry without TLS, ``http://host``."""
        if not self._scheme_known:
            self._probe_scheme()
        return f"{self._scheme}://{self.registry}"

    def _probe_scheme(self) -> None:
        """For ``insecure``: keep HTTPS (unverified) when the registry speaks TLS, else use plain HTTP."""
        with self._lock:
            if self._scheme_known:
                return
            try:
                self._http.get(f"https://{self.registry}/v2/").close()
            except httpx.TransportError as exc:
                if _ssl_failure(exc) is not None or isinstance(exc, httpx.RemoteProtocolError):
                    self._scheme = "http"
                elif _is_refused(exc):
                    # nothing on the port over TLS either way; plain HTTP is what an insecure registry means
                    self._scheme = "http"
            self._scheme_known = True

    def _url(self, path: str) -> str:
        return self.base_url + path

    # -- auth

    def _basic_header(self) -> str:
        assert self.credentials is not None
        user, password = self.credentials
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")

    def _auth_error(self, status: int | None = None, detail: str = "") -> RegistryError:
        what = "authentication failed" if self.credentials else "authentication required"
        suffix = f": {detail}" if detail else ""
        return RegistryError(f"{what} for {self.registry}{suffix}", f"yurt registry login {self.registry}",
                             status=status)

    def _authorization(self, scopes: tuple[str, ...]) -> str | None:
        key = " ".join(scopes)
        with self._lock:
            cached = self._tokens.get(key)
            if cached and cached[1] > time.monotonic():
                return "Bearer " + cached[0]
            if self._use_basic and self.credentials:
                return self._basic_header()
            if self._bearer is not None:
                return "Bearer " + self._fetch_token(self._bearer, scopes)
        return None

    def _answer_challenge(self, response: httpx.Response, scopes: tuple[str, ...]) -> bool:
        """React to a 401; True when a retry with new credentials makes sense."""
        challenge = parse_challenge(response.headers.get("www-authenticate", ""))
        if challenge is None:
            return False
        scheme, params = challenge
        with self._lock:
            if scheme == "basic":
                if not self.credentials or self._use_basic:
                    return False
                self._use_basic = True
                return True
            if scheme == "bearer":
                realm = params.get("realm")
                if not realm:
                    raise RegistryError(f"registry {self.registry} asked for a bearer token without a realm")
                self._bearer = {"realm": realm, "service": params.get("service", "")}
                wanted = scopes
                if params.get("scope"):
                    extra = tuple(s for s in params["scope"].split(" ") if s and s not in scopes)
                    wanted = scopes + extra
                self._tokens.pop(" ".join(scopes), None)
                token = self._fetch_token(self._bearer, wanted)
                self._tokens[" ".join(scopes)] = (token, self._tokens[" ".join(wanted)][1])
                return True
        return False

    def _fetch_token(self, bearer: dict[str, str], scopes: tuple[str, ...]) -> str:
        """A bearer token for ``scopes`` from the token server (Docker token protocol); cached."""
        params = [("service", bearer["service"])] if bearer.get("service") else []
        params += [("scope", s) for s in scopes]
        headers = {"Authorization": self._basic_header()} if self.credentials else {}
        response = self._send("GET", bearer["realm"], params=params, headers=headers, auth=False)
        try:
            if response.status_code in (401, 403):
                raise self._auth_error(response.status_code)
            if response.status_code != 200:
                raise self._error(response, "token request")
            try:
                doc = json.loads(response.read())
            except (ValueError, RecursionError):
                raise RegistryError(f"the token server of {self.registry} did not answer JSON")
        finally:
            response.close()
        token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"the token server of {self.registry} sent no token")
        try:
            lifetime = max(60, int(doc.get("expires_in") or 60))
        except (TypeError, ValueError):
            lifetime = 60
        self._tokens[" ".join(scopes)] = (token, time.monotonic() + lifetime - 10)
        return token

    # -- the request loop

    def _sleep(self, attempt: int, response: httpx.Response | None = None) -> None:
        delay = self.backoff * (2 ** attempt)
        if response is not None:
            retry_after = response.headers.get("retry-after", "")
            if retry_after.strip().isdigit():
                delay = max(delay, float(retry_after))
        delay = min(delay, MAX_BACKOFF) * random.uniform(0.8, 1.2)
        time.sleep(delay)

    def _send(self, method: str, url: str | httpx.URL, *, scopes: tuple[str, ...] = (),
              headers: dict[str, str] | None = None, params: object = None, content: bytes | None = None,
              stream: bool = False, retry: bool = True, auth: bool = True) -> httpx.Response:
        """Send one request: auth challenges answered, retryable failures retried.

        Returns the response for any status but 401/403 (which raise); the
        caller checks the status and closes the response.
        """
        attempt = 0
        reauthorized = False
        while True:
            request_headers = dict(headers or {})
            if auth:
                authorization = self._authorization(scopes)
                if authorization:
                    request_headers["Authorization"] = authorization
            try:
                request = self._http.build_request(method, url, headers=request_headers, params=params,
                                                   content=content)
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                if retry and self._backoff(attempt, exc):
                    attempt += 1
                    continue
                raise self._transport_error(exc)
            if auth and response.status_code == 401:
                if not reauthorized and self._answer_challenge(response, scopes):
                    response.close()
                    reauthorized = True
                    continue
                response.close()
                raise self._auth_error(401)
            if auth and response.status_code == 403:
                raise self._auth_error(403, self._error_text(response))
            if retry and response.status_code in RETRY_STATUSES and attempt < self.retries:
                response.close()
                self._sleep(attempt, response)
                attempt += 1
                continue
            return response

    def _backoff(self, attempt: int, exc: Exception) -> bool:
        """After a transport error: wait and say yes when this attempt may be retried (a reset, a timeout)."""
        if attempt < self.retries and _retryable(exc):
            self._sleep(attempt)
            return True
        return False

    # -- errors

    @staticmethod
    def _response_errors(response: httpx.Response) -> list[tuple[str, str]]:
        """The registry's ``errors`` of a failed response (which is read and closed)."""
        try:
            body = response.read()
        except httpx.HTTPError:
            body = b""
        finally:
            response.close()
        return _registry_errors(body)

    def _error_text(self, response: httpx.Response) -> str:
        return _errors_text(self._response_errors(response))

    def _error(self, response: httpx.Response, what: str) -> RegistryError:
        errors = self._response_errors(response)
        text = _errors_text(errors) or f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
        return RegistryError(f"registry {self.registry}: {text} ({what})", status=response.status_code,
                             codes=[c for c, _ in errors], retryable=response.status_code in RETRY_STATUSES)

    def _transport_error(self, exc: httpx.TransportError) -> RegistryError:
        host = self.registry
        try:
            url_host = exc.request.url.netloc.decode("ascii")
            host = url_host or host
        except (RuntimeError, AttributeError, UnicodeDecodeError):
            pass
        ssl_error = _ssl_failure(exc)
        if isinstance(ssl_error, ssl.SSLCertVerificationError):
            reason = ssl_error.verify_message or ssl_error.reason or str(ssl_error)
            return RegistryError(f"TLS certificate verification failed for {host}: {reason}",
                                 "use --insecure to skip verification, or --ca-file with the CA that signed "
                                 "the registry's certificate")
        if ssl_error is not None:
            reason = ssl_error.reason or str(ssl_error)
            return RegistryError(f"TLS handshake with {host} failed: {reason}",
                                 "if the registry serves plain HTTP, use --insecure")
        if _is_refused(exc):
            return RegistryError(f"cannot connect to registry {host}: connection refused",
                                 "is the registry running, and the host and port right?")
        if any(isinstance(e, socket.gaierror) for e in _exception_chain(exc)):
            return RegistryError(f"cannot resolve registry host {host.rsplit(':', 1)[0]}")
        if isinstance(exc, httpx.TimeoutException):
            return RegistryError(f"registry {host} did not answer within {self.timeout:g} s", retryable=True)
        detail = str(exc) or type(exc).__name__
        return RegistryError(f"connection to registry {host} failed: {detail}", retryable=_retryable(exc))

    # -- small documents

    def _get_document(self, url: str, scopes: tuple[str, ...], headers: dict[str, str], what: str,
                      limit: int = MAX_MANIFEST_SIZE) -> tuple[httpx.Response, bytes]:
        """GET a small document, read in full (at most ``limit`` bytes); retried as a whole."""
        attempt = 0
        while True:
            response = self._send("GET", url, scopes=scopes, headers=headers, stream=True)
            if response.status_code != 200:
                raise self._error(response, what)
            chunks: list[bytes] = []
            total = 0
            try:
                for chunk in response.iter_bytes(READ_SIZE):
                    total += len(chunk)
                    if total > limit:
                        raise RegistryError(f"registry {self.registry}: the {what} is larger than {limit} bytes")
                    chunks.append(chunk)
            except httpx.TransportError as exc:
                if self._backoff(attempt, exc):
                    attempt += 1
                    continue
                raise self._transport_error(exc)
            finally:
                response.close()
            return response, b"".join(chunks)

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
