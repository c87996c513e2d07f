"""The one exception the registry code raises, and the registry's JSON error body it is built from.

Separate from :mod:`.transport` so that code which only catches or raises
:class:`RegistryError` (and :mod:`.challenge`) does not import ``httpx``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from yurt.errors import YurtError


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
