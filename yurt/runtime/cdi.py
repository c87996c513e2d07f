"""``--device vendor.com/class=name``: Container Device Interface (CDI) specs applied to the ContainerSpec.

A CDI spec (``/etc/cdi/*.json``, ``/var/run/cdi/*.json``, written by a driver
installer such as ``nvidia-ctk cdi generate``) names devices of one ``kind``
(``vendor/class``) and says how a container gets each: ``containerEdits``
with ``env``, ``deviceNodes``, ``mounts`` and ``hooks``.  Edits at the top of
the spec apply once when any of its devices is requested, then each
requested device's own edits, in the order asked for.

Specs are read as JSON (JSON is also valid YAML, so ``.yaml`` files written
as JSON work; real YAML syntax is reported, as the standard library has no
YAML parser).  Later directories win over earlier ones for the same kind
(``/var/run/cdi`` over ``/etc/cdi``, as the CDI reference implementation
does); two files of one kind in the same directory are an error when that
kind is requested.  ``additionalGids`` and ``intelRdt`` need privileges
yurt does not have; they are ignored with a warning.

Device nodes cannot be created without privileges, so each one is bound from
the host (``hostPath``, default ``path``).
"""

from __future__ import annotations

import os

from yurt.errors import UsageError, YurtError
from yurt.readfile import MIB, read_file
from yurt.runtime import gpu
from yurt.spec import HOOK_STAGES, ContainerSpec, Hook, Mount

DEFAULT_DIRS = ("/etc/cdi", "/var/run/cdi")
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def cdi_dirs(given: list[str] | None) -> list[str]:
    """``--cdi-dirs`` (comma lists, repeatable; or ``YURT_CDI_DIRS``), else the standard two."""
    if given:
        return [d for item in given for d in item.split(",") if d]
    return list(DEFAULT_DIRS)


def parse_device_name(qualified: str) -> tuple[str, str]:
    """``vendor.com/class=name`` -> ``("vendor.com/class", "name")``, validated."""
    kind, sep, name = qualified.partition("=")
    if not sep or not name:
        raise UsageError(f"bad --device {qualified!r}", "use a CDI name: vendor.com/class=name")
    check_kind(kind, qualified)
    if not _valid_segment(name):
        raise UsageError(f"bad device name {name!r} in --device {qualified!r}",
                         "letters, digits, '-', '_' and '.', starting and ending with a letter or digit")
    return kind, name


def check_kind(kind: str, where: str) -> None:
    vendor, sep, cls = kind.partition("/")
    labels = vendor.split(".")
    if (not sep or "/" in cls or not _valid_segment(cls) or len(cls) > 63 or not vendor or len(vendor) > 253
            or not all(lbl and lbl[0].isalnum() and lbl[-1].isalnum()
                       and all(c.isalnum() or c == "-" for c in lbl) for lbl in labels)):
        raise UsageError(f"bad CDI kind {kind!r} in {where}", "a kind is vendor.com/class")


def _valid_segment(s: str) -> bool:
    return bool(s) and s[0].isalnum() and s[-1].isalnum() and set(s) <= _NAME_CHARS


def load_specs(dirs: list[str]) -> tuple[dict[str, tuple[str, dict]], list[str]]:
    """``kind -> (file, spec document)`` from every directory (later directories win), and unreadable files."""
    import json

    by_kind: dict[str, tuple[str, dict]] = {}
    conflicts: dict[str, str] = {}
    skipped: list[str] = []
    for d in dirs:
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        in_dir: dict[str, tuple[str, dict]] = {}
        clashes: dict[str, str] = {}
        for name in names:
            if not name.endswith((".json", ".yaml", ".yml")):
                continue
            path = os.path.join(d, name)
            try:  # bounded; a FIFO in a --cdi-dirs directory does not hang
                doc = json.loads(read_file(path, "CDI spec", 16 * MIB))
            except (YurtError, ValueError, RecursionError):
                skipped.append(path)
                continue
            kind = doc.get("kind") if isinstance(doc, dict) else None
            if not isinstance(kind, str):
                skipped.append(path)
                continue
            if kind in in_dir:
                clashes[kind] = f"{in_dir[kind][0]} and {path}"
                continue
            in_dir[kind] = (path, doc)
        for kind, entry in in_dir.items():  # this directory wins over the earlier ones
            by_kind[kind] = entry
            conflicts.pop(kind, None)
        conflicts.update(clashes)
    for kind, where in conflicts.items():
        by_kind[kind] = (where, {"__conflict__": True})
    return by_kind, skipped


def resolve(requested: list[str], dirs: list[str]) -> list[tuple[str, dict]]:
    """The edits to apply, in order: ``(description, containerEdits)``."""
    specs, skipped = load_specs(dirs)
    edits: list[tuple[str, dict]] = []
    seen_kinds: set[str] = set()
    for qualified in requested:
        kind, name = parse_device_name(qualified)
        if kind not in specs:
            hint = f"no CDI spec of kind {kind} in {', '.join(dirs)}"
            if skipped:
                hint += f"; could not read {', '.join(skipped)} (yurt reads CDI specs written as JSON)"
            raise UsageError(f"unknown CDI device {qualified}", hint)
        path, doc = specs[kind]
        if doc.get("__conflict__"):
            raise UsageError(f"CDI kind {kind} is defined twice: {path}", "remove one of the files")
        devices = doc.get("devices")
        if not isinstance(devices, list):
            raise UsageError(f"CDI spec {path} has no devices list")
        device = next((dv for dv in devices if isinstance(dv, dict) and dv.get("name") == name), None)
        if device is None:
            known = ", ".join(str(dv.get("name")) for dv in devices if isinstance(dv, dict))
            raise UsageError(f"unknown CDI device {qualified}", f"{path} has: {known}")
        if kind not in seen_kinds:
            seen_kinds.add(kind)
            top = doc.get("containerEdits")
            for item in (top if isinstance(top, list) else [top] if top else []):
                edits.append((path, item))
        if device.get("containerEdits"):
            edits.append((f"{path} ({name})", device["containerEdits"]))
    return edits


def apply_edits(spec: ContainerSpec, edits: list[tuple[str, dict]], site=None) -> None:
    """Carry ``containerEdits`` over into the spec (environment, device nodes, mounts, hooks).

    ``site`` (a :class:`yurt.config.Config`) checks every host path against the site's denied
    binds: a CDI spec a user wrote is no way around them.
    """
    for where, e in edits:
        if not isinstance(e, dict):
            raise UsageError(f"bad containerEdits in CDI spec {where}")
        for item in e.get("env") or []:
            key, sep, value = str(item).partition("=")
            if not sep or not key:
                raise UsageError(f"bad env entry {item!r} in CDI spec {where}")
            spec.process.env[key] = value
            spec.extras.inject_env[key] = value  # wins over the image's env scripts too
        nodes = []
        for node in e.get("deviceNodes") or []:
            if not isinstance(node, dict):
                raise UsageError(f"bad deviceNodes entry {node!r} in CDI spec {where}")
            path = node.get("path")
            if not isinstance(path, str) or not path.startswith("/"):
                raise UsageError(f"bad deviceNodes entry {node!r} in CDI spec {where}")
            host = node.get("hostPath") or path
            if not os.path.exists(host):
                raise UsageError(f"CDI device node {host} does not exist on this host", f"from {where}")
            if site is not None:
                site.check_bind(host, f"CDI device node (from {where})")
            nodes.append((host, path))
        gpu.add_device_nodes(spec, nodes)
        for m in e.get("mounts") or []:
            mount = _mount(m, where)
            if site is not None and mount.kind == "bind":
                site.check_bind(mount.source, f"CDI mount (from {where})")
            spec.mounts.append(mount)
        for h in e.get("hooks") or []:
            if not isinstance(h, dict):
                raise UsageError(f"bad hook {h!r} in CDI spec {where}")
            timeout = h.get("timeout")
            if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0):
                raise UsageError(f"bad hook timeout {timeout!r} in CDI spec {where}", "a whole number of seconds")
            stage = h.get("hookName")
            if stage not in HOOK_STAGES or not str(h.get("path", "")).startswith("/"):
                raise UsageError(f"bad hook {h!r} in CDI spec {where}", f"hookName is one of {', '.join(HOOK_STAGES)}")
            spec.hooks.setdefault(stage, []).append(Hook.from_oci(h))
        if e.get("additionalGids") or e.get("additionalGIDs") or e.get("intelRdt"):
            gpu.warn(f"CDI spec {where}: additionalGids/intelRdt need privileges yurt does not use; ignored")


def _mount(m: dict, where: str) -> Mount:
    if not isinstance(m, dict):
        raise UsageError(f"bad mounts entry {m!r} in CDI spec {where}")
    host, dest = m.get("hostPath"), m.get("containerPath")
    if not isinstance(host, str) or not isinstance(dest, str) or not dest.startswith("/"):
        raise UsageError(f"bad mounts entry {m!r} in CDI spec {where}")
    options = [str(o) for o in m.get("options") or []]
    kind = m.get("type") or "bind"
    if kind in ("bind", "none") or "bind" in options or "rbind" in options:
        if not os.path.exists(host):
            raise UsageError(f"CDI mount source {host} does not exist on this host", f"from {where}")
        return Mount(dest, "bind", host, ["ro"] if "ro" in options else [])
    if kind == "tmpfs":
        return Mount(dest, "tmpfs", None, [o for o in options if "=" in o])
    raise UsageError(f"CDI mount type {kind!r} in {where} is not supported", "yurt supports bind and tmpfs")


def apply(spec: ContainerSpec, requested: list[str], dirs: list[str], site=None) -> None:
    apply_edits(spec, resolve(requested, dirs), site)
    spec.annotations["yurt.devices"] = ",".join(requested)
