"""How one request reaches a registry: TLS, the ``http``/``https`` choice, retries with backoff, error text.

* **Transport**: HTTPS with certificate verification against the system's CA
  store (plus ``ca_file`` when given).  ``insecure=True`` means what it means
  for Docker: TLS without verification, or plain HTTP when the registry does
  not speak TLS at all.
* **Robustness**: ``5xx``, ``429``, timeouts and dropped connections are
  retried with exponential backoff (``Retry-After`` honoured).
* **Errors**: everything ends as one :class:`~yurt.registry.errors.RegistryError`
  line, built from the registry's ``{"errors": [{"code", "message"}]}`` body
  when it sent one, or naming what failed (refused, TLS, DNS, timeout).

:class:`RegistryTransport` is the base of
:class:`~yurt.registry.client.RegistryClient`, which sets up the state it uses
(``_http``, ``_scheme``, ``_lock``, ``retries``, ...); the auth challenge
handling it calls (:class:`~yurt.registry.challenge.ChallengeAuth`) is its own base.
"""

from __future__ import annotations

import os
import random
import socket
import ssl
import time
from collections.abc import Iterable

import httpx

from yurt import __version__
from yurt.registry.challenge import ChallengeAuth
from yurt.registry.errors import RegistryError, _errors_text, _registry_errors

MAX_MANIFEST_SIZE = 4 << 20  # what containerd accepts
READ_SIZE = 1 << 20
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_BACKOFF = 30.0
USER_AGENT = f"yurt/{__version__}"


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


class RegistryTransport(ChallengeAuth):
    """Sends requests to one registry; see the module docstring."""

    registry: str
    insecure: bool
    timeout: float
    retries: int
    backoff: float
    _scheme: str
    _scheme_known: bool
    _http: httpx.Client

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
