"""Answering a registry's ``401`` challenge: HTTP Basic, or a bearer token (the Docker token protocol).

Not to be confused with :mod:`.auth`, which finds the *credentials* (``yurt
registry login``, ``~/.docker/config.json``, ...); this module *uses* them on
the wire.  Anonymous first; a ``WWW-Authenticate: Basic`` challenge is answered
with the credentials, a ``Bearer`` one with a token fetched from the
challenge's ``realm`` for the request's scope, sending the credentials, if any,
to the token server.  Tokens are cached per scope until they expire; once the
registry has asked for tokens, later scopes are fetched up front instead of
after another ``401``.

:class:`ChallengeAuth` is a base class of
:class:`~yurt.registry.transport.RegistryTransport`: it keeps its state in the
client (``credentials``, ``_tokens``, ``_bearer``, ``_use_basic``, ``_lock``,
set up by :class:`~yurt.registry.client.RegistryClient`) and sends the token
request through the transport's ``_send`` (retries, TLS, error text).
"""

from __future__ import annotations

import base64
import json
import re
import time
from typing import TYPE_CHECKING

from yurt.registry.errors import RegistryError

if TYPE_CHECKING:
    import threading

    import httpx

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


class ChallengeAuth:
    """The ``Authorization`` header for a request, and what to do about a ``401``; see the module docstring."""

    registry: str
    credentials: tuple[str, str] | None
    _lock: threading.RLock
    _tokens: dict[str, tuple[str, float]]
    _bearer: dict[str, str] | None
    _use_basic: bool

    if TYPE_CHECKING:  # provided by RegistryTransport
        def _send(self, method: str, url: str | httpx.URL, **kwargs: object) -> httpx.Response: ...

        def _error(self, response: httpx.Response, what: str) -> RegistryError: ...

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
