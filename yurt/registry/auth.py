"""Registry credentials and per-registry settings.

Credentials for a registry host are looked up, first match wins, in:

1. ``YURT_DOCKER_USERNAME`` / ``YURT_DOCKER_PASSWORD`` (both set; any registry; Apptainer's
   ``APPTAINER_DOCKER_USERNAME``/``SINGULARITY_...`` too, see :func:`yurt.config.env_lookup`);
2. yurt's own store ``~/.config/yurt/auth.json`` (``$XDG_CONFIG_HOME/yurt/auth.json``),
   written by ``yurt registry login`` through :func:`save_login`: mode 0600,
   replaced atomically, in the format of Docker's ``config.json``
   (``{"auths": {HOST: {"auth": base64("user:password")}}}``);
3. ``$REGISTRY_AUTH_FILE`` (podman/skopeo's auth file, same format);
4. ``~/.docker/config.json`` (``auths`` only: credential helpers are not run).

A registry is *insecure* (plain HTTP, or TLS without verification) when it is
listed in ``YURT_INSECURE_REGISTRIES`` (comma separated hosts).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from yurt.errors import YurtError
from yurt.registry.reference import normalize_registry as normalize_host

ENV_USERNAME = "YURT_DOCKER_USERNAME"
ENV_PASSWORD = "YURT_DOCKER_PASSWORD"
ENV_INSECURE = "YURT_INSECURE_REGISTRIES"

Credentials = tuple[str, str]


def _debug(message: str) -> None:
    if os.environ.get("YURT_DEBUG", "").lower() in ("1", "true", "yes", "on"):
        sys.stderr.write(f"yurt: debug: {message}\n")


def store_path() -> Path:
    """yurt's own credential store: ``$XDG_CONFIG_HOME/yurt/auth.json`` or ``~/.config/yurt/auth.json``."""
    base = os.environ.get("XDG_CONFIG_HOME")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"
    return root / "yurt" / "auth.json"


def _sources() -> Iterator[Path]:
    yield store_path()
    env_file = os.environ.get("REGISTRY_AUTH_FILE")
    if env_file:
        yield Path(env_file)
    yield Path.home() / ".docker" / "config.json"


def _read_config(path: Path) -> dict:
    from yurt.readfile import MIB, read_file

    if not os.path.lexists(path):
        return {}
    try:  # bounded, and no blocking open of a FIFO
        raw = read_file(str(path), "", MIB, YurtError)
    except YurtError as e:
        _debug(str(e))
        return {}
    try:
        doc = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (ValueError, RecursionError):  # UnicodeDecodeError included
        raise YurtError(f"{path} is not valid JSON", "fix or remove the file")
    if not isinstance(doc, dict):
        raise YurtError(f"{path} is not a JSON object", "fix or remove the file")
    return doc


def _decode_entry(entry: object, where: str) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise YurtError(f"{where}: the 'auth' value is not base64 of user:password")
        if not sep:
            raise YurtError(f"{where}: the 'auth' value has no ':' between user and password")
        return user, password
    user, password = entry.get("username"), entry.get("password")
    if isinstance(user, str) and isinstance(password, str) and user:
        return user, password
    if entry.get("identitytoken"):
        _debug(f"{where}: identity tokens are not supported; ignored")
    return None


def _host_key(key: str) -> str | None:
    """The host a config key names (``https://index.docker.io/v1/`` too); ``None`` for per-repository keys."""
    path = key.split("://", 1)[-1].partition("/")[2].strip("/")
    return normalize_host(key) if path in ("", "v1", "v2") else None


def _lookup_in(path: Path, host: str) -> Credentials | None:
    doc = _read_config(path)
    auths = doc.get("auths")
    if isinstance(auths, dict):
        # an exact key first, then keys that are URLs or name the same host differently
        if host in auths:
            found = _decode_entry(auths[host], f"{path} ({host})")
            if found:
                return found
        for key, entry in auths.items():
            if key != host and _host_key(key) == host:
                found = _decode_entry(entry, f"{path} ({key})")
                if found:
                    return found
    helpers = doc.get("credHelpers")
    if isinstance(helpers, dict) and any(normalize_host(k) == host for k in helpers):
        _debug(f"{path}: a credential helper is configured for {host}; yurt does not run helpers")
    elif doc.get("credsStore"):
        _debug(f"{path}: credsStore {doc['credsStore']!r} ignored; yurt does not run credential helpers")
    return None


def credentials_for(host: str) -> Credentials | None:
    """``(user, password)`` for ``host``, or ``None`` to go anonymous (see the module docstring)."""
    host = normalize_host(host)
    from yurt.config import env_lookup  # YURT_DOCKER_USERNAME, else APPTAINER_..., else SINGULARITY_...

    user, password = env_lookup(("DOCKER_USERNAME",)), env_lookup(("DOCKER_PASSWORD",))
    if user and user[1] and password is not None:
        _debug(f"credentials for {host} from {user[0]}/{password[0]}")
        return user[1], password[1]
    for path in _sources():
        found = _lookup_in(path, host)
        if found:
            _debug(f"credentials for {host} from {path}")
            return found
    return None


def _write_store(doc: dict) -> Path:
    """Replace the store atomically, mode 0600 from the start."""
    from yurt.store.atomic import write_bytes

    path = store_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return write_bytes(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode(), mode=0o600)


def save_login(host: str, username: str, password: str) -> Path:
    """Store credentials for ``host`` in yurt's store; returns the store's path."""
    if not username or ":" in username:
        raise YurtError(f"invalid user name {username!r}: it must be non-empty and contain no ':'")
    host = normalize_host(host)
    doc = _read_config(store_path())
    auths = doc.get("auths")
    if not isinstance(auths, dict):
        auths = doc["auths"] = {}
    auths[host] = {"auth": base64.b64encode(f"{username}:{password}".encode()).decode("ascii")}
    return _write_store(doc)


def remove_login(host: str) -> bool:
    """Forget yurt's stored credentials for ``host``; ``False`` when there were none."""
    host = normalize_host(host)
    path = store_path()
    doc = _read_config(path)
    auths = doc.get("auths")
    if not isinstance(auths, dict):
        return False
    keys = [k for k in auths if k == host or _host_key(k) == host]
    if not keys:
        return False
    for key in keys:
        del auths[key]
    _write_store(doc)
    return True


def list_logins() -> list[tuple[str, str]]:
    """``(host, user)`` for every registry in yurt's own store (passwords are not returned)."""
    path = store_path()
    auths = _read_config(path).get("auths")
    result = []
    if isinstance(auths, dict):
        for key, entry in sorted(auths.items()):
            found = _decode_entry(entry, f"{path} ({key})")
            if found:
                result.append((key, found[0]))
    return result


def insecure_registries() -> set[str]:
    """Hosts listed in ``YURT_INSECURE_REGISTRIES`` (comma separated), normalized."""
    value = os.environ.get(ENV_INSECURE, "")
    return {normalize_host(h) for h in value.split(",") if h.strip()}


def is_insecure(host: str) -> bool:
    """Whether ``host`` may be reached over plain HTTP or unverified TLS."""
    return normalize_host(host) in insecure_registries()
