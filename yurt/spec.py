"""ContainerSpec: the one description of a container that the launcher runs.

A typed mirror of the OCI runtime-spec ``config.json`` (process, root, mounts,
namespaces, id mappings, hostname, annotations).  Every front end (``exec``,
``run``, ``shell``, build steps, HPC helpers) produces one of these; only
:mod:`yurt.runtime` turns it into kernel calls.  It is plain data, so plans can
be unit-tested and printed (``--debug``) without privileges, and written out as
an OCI bundle (:meth:`ContainerSpec.to_oci`).

yurt-specific needs that OCI has no field for travel in ``Mount.kind`` values
OCI lacks (``file``, ``passwd``, ``group``) and in :class:`YurtExtras`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Namespace names as the OCI runtime spec spells them.
NS_USER = "user"
NS_MOUNT = "mount"
NS_PID = "pid"
NS_IPC = "ipc"
NS_UTS = "uts"
NS_NET = "network"
NS_CGROUP = "cgroup"


@dataclass
class IDMapping:
    """``container_id .. container_id+size`` inside maps to ``host_id ..`` outside."""

    container_id: int
    host_id: int
    size: int = 1


@dataclass
class Mount:
    """One step of the mount plan, executed in list order.

    ``kind`` is the filesystem type for kernel mounts (``tmpfs``, ``proc``,
    ``sysfs``, ``devpts``, ``mqueue``), ``bind`` for bind mounts, or one of the
    yurt-generated kinds: ``file`` (``content`` written to the session tmpfs and
    bound read-only at ``destination``), ``passwd``/``group`` (the image's file
    plus an entry for the user), ``devdir`` (a minimal ``/dev``).
    ``optional`` mounts are skipped with a debug note when the source is
    missing (e.g. the host has no ``/etc/localtime``).
    """

    destination: str
    kind: str = "bind"
    source: str | None = None
    options: list[str] = field(default_factory=list)
    content: bytes | None = None
    optional: bool = False

    @property
    def readonly(self) -> bool:
        return "ro" in self.options


@dataclass
class Process:
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    no_new_privileges: bool = True
    # Fall back to this directory when ``cwd`` does not exist in the container.
    fallback_cwd: str | None = None


@dataclass
class YurtExtras:
    """What yurt needs beyond the OCI fields.

    ``env_scripts`` asks the launcher to source ``/.singularity.d/env/*.sh`` with
    the image's ``/bin/sh`` before running the payload (Apptainer semantics), and
    ``inject_env`` then sets variables that must win over those scripts
    (``--env``, ``YURTENV_*``).  ``writable_tmpfs_size_mb`` > 0 asks for a
    tmpfs upper layer; ``overlays`` are ``--overlay`` directories.
    """

    env_scripts: bool = False
    inject_env: dict[str, str] = field(default_factory=dict)
    env_script_text: str = ""
    writable_tmpfs: bool = False
    session_size_mb: int = 64
    overlays: list[str] = field(default_factory=list)
    init: bool = True
    fakeroot_multi: bool = False
    debug: bool = False


@dataclass
class ContainerSpec:
    process: Process
    namespaces: list[str] = field(default_factory=lambda: [NS_USER, NS_MOUNT])
    uid_mappings: list[IDMapping] = field(default_factory=list)
    gid_mappings: list[IDMapping] = field(default_factory=list)
    mounts: list[Mount] = field(default_factory=list)
    hostname: str | None = None
    root_readonly: bool = True
    annotations: dict[str, str] = field(default_factory=dict)
    extras: YurtExtras = field(default_factory=YurtExtras)

    def has(self, namespace: str) -> bool:
        return namespace in self.namespaces

    def to_oci(self, root_path: str = "rootfs") -> dict:
        """The spec as an OCI runtime ``config.json`` document."""
        mounts = []
        for m in self.mounts:
            entry: dict = {"destination": m.destination, "type": m.kind, "options": list(m.options)}
            if m.source is not None:
                entry["source"] = m.source
            if m.kind in ("file", "passwd", "group", "devdir"):
                entry["type"] = "bind"
                entry.setdefault("options", []).append(f"yurt.kind={m.kind}")
            mounts.append(entry)
        doc: dict = {
            "ociVersion": "1.0.2",
            "process": {
                "args": list(self.process.args),
                "env": [f"{k}={v}" for k, v in self.process.env.items()],
                "cwd": self.process.cwd,
                "user": {"uid": self.process.uid, "gid": self.process.gid},
                "noNewPrivileges": self.process.no_new_privileges,
            },
            "root": {"path": root_path, "readonly": self.root_readonly},
            "mounts": mounts,
            "linux": {
                "namespaces": [{"type": ns} for ns in self.namespaces],
                "uidMappings": [_map_to_oci(m) for m in self.uid_mappings],
                "gidMappings": [_map_to_oci(m) for m in self.gid_mappings],
            },
            "annotations": dict(self.annotations),
        }
        if self.hostname:
            doc["hostname"] = self.hostname
        return doc

    @classmethod
    def from_oci(cls, doc: dict) -> ContainerSpec:
        """Read back a ``config.json`` (the subset yurt understands)."""
        proc = doc.get("process", {})
        env = dict(e.split("=", 1) for e in proc.get("env", []) if "=" in e)
        user = proc.get("user", {})
        linux = doc.get("linux", {})
        mounts = []
        for m in doc.get("mounts", []):
            options = [o for o in m.get("options", []) if not o.startswith("yurt.kind=")]
            kinds = [o.split("=", 1)[1] for o in m.get("options", []) if o.startswith("yurt.kind=")]
            mounts.append(
                Mount(
                    destination=m["destination"],
                    kind=kinds[0] if kinds else m.get("type", "bind"),
                    source=m.get("source"),
                    options=options,
                )
            )
        return cls(
            process=Process(
                args=list(proc.get("args", [])),
                env=env,
                cwd=proc.get("cwd", "/"),
                uid=int(user.get("uid", 0)),
                gid=int(user.get("gid", 0)),
                no_new_privileges=bool(proc.get("noNewPrivileges", True)),
            ),
            namespaces=[ns["type"] for ns in linux.get("namespaces", [])],
            uid_mappings=[_map_from_oci(m) for m in linux.get("uidMappings", [])],
            gid_mappings=[_map_from_oci(m) for m in linux.get("gidMappings", [])],
            mounts=mounts,
            hostname=doc.get("hostname"),
            root_readonly=bool(doc.get("root", {}).get("readonly", True)),
            annotations=dict(doc.get("annotations", {})),
        )


def _map_to_oci(m: IDMapping) -> dict:
    return {"containerID": m.container_id, "hostID": m.host_id, "size": m.size}


def _map_from_oci(d: dict) -> IDMapping:
    return IDMapping(int(d["containerID"]), int(d["hostID"]), int(d.get("size", 1)))
