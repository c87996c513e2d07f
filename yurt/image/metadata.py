"""Typed reading of an image's JSON metadata: the OCI image config and labels.

JSON from an image is as hostile as its files (:mod:`yurt.image.inroot`): ``Env`` may be a
string, ``Cmd`` an object, labels an array, a number where a path goes, a ``\\u0000`` inside a
string (``execve`` cannot pass it), or arrays nested a hundred thousand deep (``json`` raises
RecursionError).  Here each of those becomes one ImageError naming the document and the field,
so no command ever fails with a traceback; what passes has the types the rest of yurt assumes.
"""

from __future__ import annotations

import json

from yurt.errors import ImageError

# The members of an OCI image config's "config" that yurt reads, by the JSON type they must have.
_STRINGS = ("User", "WorkingDir", "StopSignal")
_STRING_LISTS = ("Env", "Entrypoint", "Cmd", "Shell", "OnBuild")
_STRING_MAPS = ("Labels",)
_OBJECTS = ("ExposedPorts", "Volumes")


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
            dict: "an object"}.get(type(value), type(value).__name__)


def parse(raw: bytes | str, what: str) -> object:
    """``json.loads`` with every failure (bad syntax, not UTF-8, absurd nesting) as one ImageError."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ImageError(f"{what}: JSON nested too deeply")
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise ImageError(f"{what}: not valid JSON ({e})")


def parse_object(raw: bytes | str, what: str) -> dict:
    doc = parse(raw, what)
    if not isinstance(doc, dict):
        raise ImageError(f"{what}: not a JSON object (found {_type_name(doc)})")
    return doc


def string(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ImageError(f"{what} must be a string, not {_type_name(value)}")
    if "\0" in value:
        raise ImageError(f"{what} contains a NUL character")
    return value


def oci_config(doc: object, what: str) -> dict:
    """The ``config`` member of an OCI image config (or ``doc`` itself when it is that member), checked.

    ``what`` names the document in messages (e.g. ``IMAGE: the OCI config``).  Members yurt does
    not use are kept as they are.
    """
    if not isinstance(doc, dict):
        raise ImageError(f"{what}: not a JSON object (found {_type_name(doc)})")
    if "config" in doc:  # a whole image config: its "config" member is what runs
        config = doc["config"]
        if config is None:
            return {}
        if not isinstance(config, dict):
            raise ImageError(f"{what}: its 'config' member is not a JSON object (found {_type_name(config)})")
        doc = config
    for key in _STRINGS:
        if doc.get(key) is not None:
            string(doc[key], f"{what}: {key}")
    for key in _STRING_LISTS:
        value = doc.get(key)
        if value is None:
            continue
        if not isinstance(value, list):
            raise ImageError(f"{what}: {key} must be an array of strings, not {_type_name(value)}")
        for i, item in enumerate(value):
            string(item, f"{what}: {key}[{i}]")
    for key in _STRING_MAPS:
        if doc.get(key) is not None:
            string_map(doc[key], f"{what}: {key}")
    for key in _OBJECTS:
        value = doc.get(key)
        if value is not None and not isinstance(value, dict):
            raise ImageError(f"{what}: {key} must be an object, not {_type_name(value)}")
    return doc


def string_map(value: object, what: str) -> dict[str, str]:
    """A JSON object of strings (OCI ``Labels``), checked."""
    if not isinstance(value, dict):
        raise ImageError(f"{what} must be an object of strings, not {_type_name(value)}")
    for key, item in value.items():
        string(key, f"{what}: key {key!r}")
        string(item, f"{what}[{key!r}]")
    return value


def labels(raw: bytes | str, what: str) -> dict[str, str]:
    """Apptainer's ``labels.json``: an object; values that are not strings are shown as JSON (as Apptainer)."""
    doc = parse_object(raw, what)
    out = {}
    for key, value in doc.items():
        try:
            out[key] = value if isinstance(value, str) else json.dumps(value)
        except RecursionError:
            raise ImageError(f"{what}: label {key!r}: JSON nested too deeply")
    return out
