"""``yurt inspect`` and ``yurt run-help``: what is in an image, without running it.

Metadata can live in three places and we read all of them, most specific first:
SIF objects (DEFFILE, LABELS, ENVVAR, GENERIC "runscript"/"runscript.help"), Apptainer's
``inspect-metadata.json`` object, and the in-image layout ``/.singularity.d/`` (labels.json,
runscript, runscript.help, env/*.sh, Singularity).  In-image files of a SIF are read with
``unsquashfs -cat`` from the partition offset, bounded in size and time; files of a sandbox
are opened without following symlinks, so an image cannot point us at host files.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from typing import Any

from yurt.errors import ImageError
from yurt.image import inroot, metadata
from yurt.image.sif import (
    ARCH_NAMES,
    DataType,
    FsType,
    PartType,
    SifFile,
    is_sif,
)
from yurt.image.squashfs import unsquashfs_cat, unsquashfs_list

SECTIONS = frozenset({"labels", "environment", "runscript", "deffile", "partitions", "digest", "helpfile",
                      "startscript", "test"})
# Attributes of an image, and of each SCIF app, as Apptainer's inspect names them (pkg/inspect), in its order.
APPTAINER_ATTRIBUTES = ("apps", "environment", "labels", "runscript", "test", "helpfile", "deffile", "startscript")
APP_FILES = {"runscript": "runscript", "startscript": "startscript", "test": "test", "helpfile": "runscript.help"}
MAX_APPS = 64
META_DIR = ".singularity.d"
INSPECT_METADATA = "inspect-metadata.json"
FILE_LIMIT = 1 << 20  # per metadata file; more is not metadata
DEFFILE_LIMIT = 4 << 20
MAX_ENV_FILES = 64
NO_HELP = "No help sections were defined for this image\n"
_SQUASHFS_MAGIC = b"hsqs"
_FS_NAMES = {FsType.SQUASH: "Squashfs", FsType.EXT3: "Ext3", FsType.IMMUOBJ: "Archive", FsType.RAW: "Raw",
             FsType.ENCRYPTED_SQUASHFS: "Encrypted squashfs", FsType.GOCRYPTFS_SQUASHFS: "Gocryptfs squashfs"}
_PART_NAMES = {PartType.SYSTEM: "System", PartType.PRIM_SYS: "*System", PartType.DATA: "Data",
               PartType.OVERLAY: "Overlay"}


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", "replace")


def _labels_from_json(data: bytes | None, warnings: list[str], where: str) -> dict[str, str]:
    if not data:
        return {}
    try:
        return metadata.labels(data, where)
    except ImageError as e:
        warnings.append(f"{e.message}; labels ignored")
        return {}


# --- reading one image kind each --------------------------------------------------------


class _SquashReader:
    """In-image files of a squashfs at an offset, with failures turned into warnings."""

    def __init__(self, path: str, offset: int, warnings: list[str]):
        self.path, self.offset, self.warnings = path, offset, warnings

    def cat(self, inner: str, limit: int = FILE_LIMIT) -> bytes | None:
        try:
            return unsquashfs_cat(self.path, self.offset, inner, limit=limit)
        except ImageError as e:
            self.warnings.append(e.message)
            return None

    def _list(self, inner_dir: str) -> list[str]:
        try:
            return unsquashfs_list(self.path, self.offset, inner_dir)
        except ImageError as e:
            self.warnings.append(e.message)
            return []

    def env_files(self, env_dir: str = f"{META_DIR}/env") -> dict[str, str]:
        env = {}
        for name in sorted(n for n in self._list(f"/{env_dir}") if n.endswith(".sh"))[:MAX_ENV_FILES]:
            data = self.cat(name)
            if data is not None:
                env[name] = data.decode("utf-8", "replace")
        return env

    def app_names(self) -> list[str]:
        return sorted({p.split("/")[3] for p in self._list("/scif/apps") if p.count("/") >= 5
                       and p.split("/")[4] == "scif"})


class _DirReader:
    """In-image files of a sandbox, read inside it without following links (:mod:`yurt.image.inroot`)."""

    def __init__(self, root: str, warnings: list[str]):
        self.root, self.warnings = root, warnings

    def cat(self, inner: str, limit: int = FILE_LIMIT) -> bytes | None:
        try:
            return inroot.read_file(self.root, inner, limit)
        except ImageError as e:
            self.warnings.append(e.message)
            return None

    def _list(self, inner_dir: str) -> list[str]:
        try:
            return inroot.list_dir(self.root, inner_dir) or []
        except ImageError as e:
            self.warnings.append(e.message)
            return []

    def env_files(self, env_dir: str = f"{META_DIR}/env") -> dict[str, str]:
        env = {}
        for name in sorted(n for n in self._list(env_dir) if n.endswith(".sh"))[:MAX_ENV_FILES]:
            data = self.cat(f"{env_dir}/{name}")
            if data is not None:
                env[f"/{env_dir}/{name}"] = data.decode("utf-8", "replace")
        return env

    def app_names(self) -> list[str]:
        return sorted(n for n in self._list("scif/apps") if self._list(f"scif/apps/{n}/scif"))


def _read_layout(reader: _SquashReader | _DirReader, info: dict[str, Any]) -> None:
    """Fill labels/environment/runscript/deffile/helpfile from /.singularity.d."""
    info["labels"] = _labels_from_json(reader.cat(f"{META_DIR}/labels.json"), info["warnings"], "labels.json")
    info["environment"] = reader.env_files()
    info["runscript"] = _text(reader.cat(f"{META_DIR}/runscript"))
    info["helpfile"] = _text(reader.cat(f"{META_DIR}/runscript.help"))
    info["deffile"] = _text(reader.cat(f"{META_DIR}/Singularity", DEFFILE_LIMIT))
    info["startscript"] = _text(reader.cat(f"{META_DIR}/startscript"))
    info["test"] = _text(reader.cat(f"{META_DIR}/test"))
    if info.get("apps") is not None:  # asked for (they cost a few reads each)
        info["apps"] = {name: _read_app(reader, name, info["warnings"]) for name in reader.app_names()[:MAX_APPS]}


def _read_app(reader: _SquashReader | _DirReader, name: str, warnings: list[str]) -> dict[str, Any]:
    """A SCIF app's attributes, from /scif/apps/NAME/scif as Apptainer's build lays them out."""
    base = f"scif/apps/{name}/scif"
    attrs: dict[str, Any] = {"labels": _labels_from_json(reader.cat(f"{base}/labels.json"), warnings,
                                                         f"app {name} labels.json"),
                             "environment": reader.env_files(f"{base}/env")}
    for key, file in APP_FILES.items():
        attrs[key] = _text(reader.cat(f"{base}/{file}"))
    return attrs


def _tree_size(root: str) -> int:
    total = 0
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def _file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def _name(table: dict, value: object) -> str:
    return table.get(value, f"Unknown({value})")


def _inspect_sif(path: str, info: dict[str, Any]) -> None:
    warnings: list[str] = info["warnings"]
    with SifFile.open(path) as sif:
        h = sif.header
        info["header"] = {
            "version": h.version, "arch": h.arch_name, "arch_code": h.arch, "id": h.uuid,
            "created": h.created_at, "modified": h.modified_at,
            "descriptors_total": h.descriptors_total, "descriptors_free": h.descriptors_free,
        }
        info["objects"] = [
            {"id": d.id, "type": d.type_name, "type_code": int(d.data_type), "name": d.name,
             "size": d.size, "offset": d.offset, "group": d.group_id, "link": d.linked_target}
            for d in sif.descriptors
        ]
        info["partitions"] = [
            {"id": d.id, "fs": _name(_FS_NAMES, d.fs_type), "type": _name(_PART_NAMES, d.part_type),
             "arch": ARCH_NAMES.get(d.part_arch or "", "unknown"), "size": d.size, "offset": d.offset}
            for d in sif.find(DataType.PARTITION)
        ]
        prim = [d for d in sif.find(DataType.PARTITION)
                if d.part_type == PartType.PRIM_SYS and d.fs_type == FsType.SQUASH]
        if prim:
            _read_layout(_SquashReader(path, prim[0].offset, warnings), info)

        def obj(dtype: DataType | None, name: str | None = None, limit: int = FILE_LIMIT) -> bytes | None:
            found = [d for d in sif.descriptors
                     if (dtype is None or d.data_type == dtype) and (name is None or d.name == name)]
            if not found:
                return None
            try:
                return sif.read_object(found[0], limit)
            except ImageError as e:
                warnings.append(e.message)
                return None

        meta = _apptainer_metadata(obj(DataType.GENERIC_JSON, INSPECT_METADATA, DEFFILE_LIMIT), warnings)
        info["labels"].update(meta.get("labels") or {})
        info["labels"].update(_labels_from_json(obj(DataType.LABELS), warnings, "SIF labels object"))
        for key, value in (meta.get("environment") or {}).items():
            info["environment"].setdefault(str(key), str(value))
        envvar = obj(DataType.ENVVAR)
        if envvar is not None:
            info["environment"]["sif:EnvVar"] = envvar.decode("utf-8", "replace")
        info["runscript"] = _first(_text(obj(DataType.GENERIC, "runscript")), info["runscript"],
                                   meta.get("runscript"))
        info["deffile"] = _first(_text(obj(DataType.DEFFILE, None, DEFFILE_LIMIT)), info["deffile"],
                                 meta.get("deffile"))
        info["helpfile"] = _first(_text(obj(None, "runscript.help")), info["helpfile"], meta.get("helpfile"))
        info["startscript"] = _first(info["startscript"], meta.get("startscript"))
        info["test"] = _first(info["test"], meta.get("test"))


def _first(*values: Any) -> Any:
    for v in values:
        if v:
            return v
    return None


def _apptainer_metadata(data: bytes | None, warnings: list[str]) -> dict[str, Any]:
    """The attributes of Apptainer's inspect-metadata.json object (pkg/inspect.Metadata), checked member by
    member: labels and environment are objects of strings, the texts are strings; others are dropped."""
    if not data:
        return {}
    try:
        attrs = metadata.parse(data, INSPECT_METADATA)["data"]["attributes"]
    except (ImageError, KeyError, TypeError):
        warnings.append(f"{INSPECT_METADATA}: not in Apptainer's metadata format; ignored")
        return {}
    if not isinstance(attrs, dict):
        warnings.append(f"{INSPECT_METADATA}: its attributes are not an object; ignored")
        return {}
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        try:
            if key in ("labels", "environment"):
                out[key] = metadata.string_map(value, f"{INSPECT_METADATA}: {key}")
            elif key in ("runscript", "deffile", "helpfile", "test", "startscript"):
                out[key] = metadata.string(value, f"{INSPECT_METADATA}: {key}")
        except ImageError as e:
            warnings.append(f"{e.message}; ignored")
    return out


def _empty_info(path: str, fmt: str, apps: bool = False) -> dict[str, Any]:
    return {"path": path, "format": fmt, "labels": {}, "environment": {}, "runscript": None,
            "deffile": None, "helpfile": None, "startscript": None, "test": None, "partitions": [],
            "warnings": [], **({"apps": {}} if apps else {})}


def _kind(path: str) -> str:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageError(f"image {path} does not exist")
    except OSError as e:
        raise ImageError(f"cannot access image {path}: {e.strerror}")
    if stat.S_ISDIR(st.st_mode):
        return "sandbox"
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(f"{path} is not a SIF, squashfs or sandbox directory image")
    if is_sif(path):
        return "sif"
    try:
        with open(path, "rb") as f:
            if f.read(4) == _SQUASHFS_MAGIC:
                return "squashfs"
    except OSError as e:
        raise ImageError(f"cannot read image {path}: {e.strerror}")
    raise ImageError(f"{path} is not a SIF, squashfs or sandbox directory image")


def inspect_image(path: str | os.PathLike[str], *, digest: bool = True, apps: bool = False) -> dict[str, Any]:
    """Everything we can tell about an image as a JSON-ready dict (see module docstring); with ``apps``, its
    SCIF apps' attributes too (``info["apps"]``)."""
    path = os.fspath(path)
    kind = _kind(path)
    info = _empty_info(path, kind, apps)
    if kind == "sandbox":
        _read_layout(_DirReader(path, info["warnings"]), info)
        info["size"] = _tree_size(path)
        return info
    info["size"] = os.stat(path).st_size
    if kind == "sif":
        _inspect_sif(path, info)
    else:
        _read_layout(_SquashReader(path, 0, info["warnings"]), info)
        info["partitions"] = [{"id": 0, "fs": "Squashfs", "type": "*System", "arch": "unknown",
                               "size": info["size"], "offset": 0}]
    if digest:
        info["digest"] = _file_digest(path)
    return info


def run_help(path: str | os.PathLike[str]) -> str:
    """The image's %help text (runscript.help), or a note that it has none."""
    info = inspect_image(path, digest=False)
    text = info.get("helpfile")
    if not text:
        return NO_HELP
    return text if text.endswith("\n") else text + "\n"


# --- output -------------------------------------------------------------------------------


def _when(ts: int) -> str:
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
    except (OverflowError, OSError, ValueError):
        return str(ts)


def _apptainer_json(info: dict[str, Any], sections: set[str]) -> dict[str, Any]:
    """``apptainer inspect --json`` shape, so scripts written for it keep working."""
    attrs: dict[str, Any] = {}
    for s in sorted(sections):
        value = info.get(s)
        if value not in (None, {}, []):
            attrs[s] = value
    return {"data": {"attributes": attrs}, "type": "container"}


def apptainer_inspect(info: dict[str, Any], sections: set[str], *, app: str | None = None,
                      json_output: bool = False, list_apps: bool = False) -> str:
    """What ``apptainer inspect`` prints (cmd/internal/cli/inspect.go): ``sections`` of the image, or with
    ``app`` of that SCIF app, as ``{"data": {"attributes": {...}}, "type": "container"}`` (tab-indented,
    empty members left out) or as its plain text; ``list_apps``: the apps' names too."""
    apps = info.get("apps") or {}
    attrs = _attributes(info if app is None else apps.get(app, {}), sections - {"apps"})
    if app is not None:
        attrs = {"apps": {app: attrs}} if app in apps else {}
    if (list_apps or "apps" in sections) and apps:  # --all: every app with its attributes; --list-apps: names
        attrs["apps"] = {name: _attributes(a, set(APPTAINER_ATTRIBUTES)) if "apps" in sections else {}
                         for name, a in sorted(apps.items())}
    attrs = {k: attrs[k] for k in APPTAINER_ATTRIBUTES if k in attrs}
    if json_output:
        return json.dumps({"data": {"attributes": attrs}, "type": "container"}, indent="\t",
                          ensure_ascii=False) + "\n"
    shown = attrs.get("apps", {}).get(app, {}) if app is not None else attrs
    out = [f"{name}\n" for name in sorted(apps)] if list_apps else []
    for key in ("deffile", "runscript", "startscript", "test", "helpfile"):
        if shown.get(key):
            out.append(shown[key] + "\n")
    for name, text in sorted((shown.get("environment") or {}).items()):
        out.append(f"=== {name} ===\n{text}\n\n")
    for key, value in sorted((shown.get("labels") or {}).items()):
        out.append(f"{key}: {value}\n")
    return "".join(out)


def _attributes(source: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    """The non-empty attributes ``keys`` of an image or app, in Apptainer's form."""
    values = ((k, _apptainer_value(k, source.get(k))) for k in APPTAINER_ATTRIBUTES if k in keys and k != "apps")
    return {k: v for k, v in values if v}


def _apptainer_value(key: str, value: Any) -> Any:
    """Apptainer's form of one attribute: texts without trailing newlines; of the environment scripts, those
    inspect shows (``10-docker*.sh``, ``9*-environment.sh``, by their paths in the image)."""
    if isinstance(value, str):
        return value.rstrip("\n")
    if key == "environment" and value:
        return {k: v.rstrip("\n") for k, v in value.items()
                if os.path.basename(k).startswith("10-docker") or (os.path.basename(k).startswith("9")
                                                                    and k.endswith("-environment.sh"))}
    return value


def _section_text(info: dict[str, Any], section: str) -> str:
    if section == "labels":
        return "".join(f"{k}: {v}\n" for k, v in sorted(info["labels"].items()))
    if section == "environment":
        out = []
        for name, content in info["environment"].items():
            out.append(f"=== {name} ===\n{content}" + ("" if content.endswith("\n") else "\n"))
        return "".join(out)
    if section == "partitions":
        rows = [f"{'ID':>4}  {'FS':<12} {'TYPE':<8} {'ARCH':<8} {'SIZE':>14}"]
        rows += [f"{p['id']:>4}  {p['fs']:<12} {p['type']:<8} {p['arch']:<8} {p['size']:>14}"
                 for p in info["partitions"]]
        return "\n".join(rows) + "\n"
    if section == "digest":
        return (info.get("digest") or "") + "\n"
    value = info.get(section) or ""
    return value if not value or value.endswith("\n") else value + "\n"


def _summary(info: dict[str, Any]) -> str:
    lines = [f"Image:      {info['path']} ({info['format']}, {info.get('size', 0)} bytes)"]
    if info.get("digest"):
        lines.append(f"Digest:     {info['digest']}")
    header = info.get("header")
    if header:
        lines += [f"Arch:       {header['arch']}", f"ID:         {header['id']}",
                  f"Created:    {_when(header['created'])}"]
    text = "\n".join(lines) + "\n"
    for title, section in (("Labels", "labels"), ("Partitions", "partitions"),
                           ("Environment", "environment"), ("Runscript", "runscript"),
                           ("Help", "helpfile"), ("Definition file", "deffile")):
        if info.get(section):
            body = _section_text(info, section)
            text += f"\n{title}:\n" + "".join(f"  {ln}\n" for ln in body.splitlines())
    if info.get("objects"):
        text += "\nObjects:\n" + "".join(
            f"  {o['id']:>4}  {o['type']:<14} {o['name'] or '-':<24} {o['size']:>14}\n"
            for o in info["objects"]
        )
    for w in info.get("warnings", []):
        text += f"\nWarning: {w}"
    return text if text.endswith("\n") else text + "\n"


def format_inspect(info: dict[str, Any], *, json_output: bool, sections: set[str]) -> str:
    """Render ``inspect_image`` output: a summary (no sections) or the chosen sections.

    JSON with sections uses Apptainer's ``{"data": {"attributes": ...}, "type": "container"}``
    shape; JSON without sections is the full yurt dict.
    """
    unknown = set(sections) - SECTIONS
    if unknown:
        raise ImageError(f"unknown inspect section(s): {', '.join(sorted(unknown))}",
                         f"choose from {', '.join(sorted(SECTIONS))}")
    if json_output:
        obj = _apptainer_json(info, set(sections)) if sections else info
        return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if not sections:
        return _summary(info)
    if len(sections) == 1:
        return _section_text(info, next(iter(sections)))
    return "".join(f"== {s} ==\n{_section_text(info, s)}" for s in sorted(sections))
