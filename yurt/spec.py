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

from yurt.record import Record

# Namespace names as the OCI runtime spec spells them.
NS_USER = "user"
NS_MOUNT = "mount"
NS_PID = "pid"
NS_IPC = "ipc"
NS_UTS = "uts"
NS_NET = "network"
NS_CGROUP = "cgroup"


class IDMapping(Record):
    """``container_id .. container_id+size`` inside maps to ``host_id ..`` outside."""

    __slots__ = ("container_id", "host_id", "size")
    _defaults = {"size": 1}
    container_id: int
    host_id: int
    size: int


class Mount(Record):
    """One step of the mount plan, executed in list order.

    ``kind`` is the filesystem type for kernel mounts (``tmpfs``, ``proc``,
    ``sysfs``, ``devpts``, ``mqueue``), ``bind`` for bind mounts, or one of the
    yurt-generated kinds: ``file`` (``content`` written to the session tmpfs and
    bound read-only at ``destination``), ``passwd``/``group`` (the image's file
    plus an entry for the user), ``devdir`` (a minimal ``/dev``).
    ``optional`` mounts are skipped with a debug note when the source is
    missing (e.g. the host has no ``/etc/localtime``).
    """

    __slots__ = ("destination", "kind", "source", "options", "content", "optional")
    _defaults = {"kind": "bind", "source": None, "options": list, "content": None, "optional": False}
    destination: str
    kind: str
    source: str | None
    options: list[str]
    content: bytes | None
    optional: bool

    @property
    def readonly(self) -> bool:
        return "ro" in self.options


class Process(Record):
    """The payload.  ``fallback_cwd`` is used when ``cwd`` does not exist in the container."""

    __slots__ = ("args", "env", "cwd", "uid", "gid", "no_new_privileges", "fallback_cwd")
    _defaults = {"env": dict, "cwd": "/", "uid": 0, "gid": 0, "no_new_privileges": True, "fallback_cwd": None}
    args: list[str]
    env: dict[str, str]
    cwd: str
    uid: int
    gid: int
    no_new_privileges: bool
    fallback_cwd: str | None


# The OCI hook stages, in the order a container meets them (the keys of ``ContainerSpec.hooks``).  Here rather
# than in yurt.runtime.hooks because the hook readers (oci-hooks files, CDI specs) and the runner all need them.
HOOK_STAGES = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")


class Hook(Record):
    """One OCI hook (``config.json`` ``hooks.<stage>[]``): run ``path`` with ``args``, exactly ``env``.

    ``timeout`` is in seconds (None: wait for it).  See :mod:`yurt.runtime.hooks`
    for when each stage runs.
    """

    __slots__ = ("path", "args", "env", "timeout")
    _defaults = {"args": list, "env": list, "timeout": None}
    path: str
    args: list[str]
    env: list[str]
    timeout: int | None

    def to_oci(self) -> dict:
        doc: dict = {"path": self.path}
        if self.args:
            doc["args"] = list(self.args)
        if self.env:
            doc["env"] = list(self.env)
        if self.timeout:
            doc["timeout"] = self.timeout
        return doc

    @classmethod
    def from_oci(cls, doc: dict) -> Hook:
        timeout = doc.get("timeout")
        return cls(path=str(doc["path"]), args=[str(a) for a in doc.get("args") or []],
                   env=[str(e) for e in doc.get("env") or []], timeout=int(timeout) if timeout else None)


class Resources(Record):
    """cgroup limits (OCI ``linux.resources``): ``memory`` in bytes (swap included), ``cpus`` as a
    fraction of CPUs (a CFS quota over a 100 ms period), ``pids`` (tasks), ``cpuset`` (``0-3,6``).
    ``None`` leaves a resource unlimited.  Applied by :mod:`yurt.runtime.cgroups`."""

    __slots__ = ("memory", "cpus", "pids", "cpuset")
    _defaults = {"memory": None, "cpus": None, "pids": None, "cpuset": None}
    memory: int | None
    cpus: float | None
    pids: int | None
    cpuset: str | None

    CPU_PERIOD = 100_000

    def any(self) -> bool:
        return any(v is not None for v in (self.memory, self.cpus, self.pids, self.cpuset))

    def to_oci(self) -> dict:
        doc: dict = {}
        if self.memory is not None:
            doc["memory"] = {"limit": self.memory, "swap": self.memory}
        if self.cpus is not None or self.cpuset is not None:
            cpu: dict = {}
            if self.cpus is not None:
                cpu.update(quota=int(self.cpus * self.CPU_PERIOD), period=self.CPU_PERIOD)
            if self.cpuset is not None:
                cpu["cpus"] = self.cpuset
            doc["cpu"] = cpu
        if self.pids is not None:
            doc["pids"] = {"limit": self.pids}
        return doc

    @classmethod
    def from_oci(cls, doc: dict) -> Resources | None:
        mem, cpu, pids = doc.get("memory") or {}, doc.get("cpu") or {}, doc.get("pids") or {}
        quota, period = cpu.get("quota"), cpu.get("period") or cls.CPU_PERIOD
        res = cls(memory=mem.get("limit"), cpus=None if quota is None or quota < 0 else quota / period,
                  pids=pids.get("limit"), cpuset=cpu.get("cpus"))
        return res if res.any() else None


class YurtExtras(Record):
    """What yurt needs beyond the OCI fields.

    ``env_scripts`` asks the launcher to source ``/.singularity.d/env/*.sh`` with
    the image's ``/bin/sh`` before running the payload (Apptainer semantics), and
    ``inject_env`` then sets variables that must win over those scripts
    (``--env``, ``YURTENV_*``).  ``writable_tmpfs_size_mb`` > 0 asks for a
    tmpfs upper layer; ``overlays`` are ``--overlay`` directories.
    ``allow_no_limits``: resource limits that cannot be applied are a warning, not an error.
    ``container_checks``: functions the launcher calls inside the container, in the new root, right
    before the payload's ``execve`` (e.g. ``--mpi=host``'s ABI check from :mod:`yurt.hpc.mpi`); a
    check raises a YurtError to stop the container.  They are made by whoever planned the container,
    while the host's modules are reachable: after ``pivot_root`` nothing can be imported.
    """

    __slots__ = ("env_scripts", "inject_env", "env_script_text", "writable_tmpfs", "session_size_mb",
                 "overlays", "init", "fakeroot_multi", "fake_ownership", "app", "debug",
                 "allow_no_limits", "run_as", "container_checks", "apptainer")
    _defaults = {"env_scripts": False, "inject_env": dict, "env_script_text": "", "writable_tmpfs": False,
                 "session_size_mb": 64, "overlays": list, "init": True, "fakeroot_multi": False,
                 "fake_ownership": False, "app": None, "debug": False,
                 "allow_no_limits": False, "run_as": None, "container_checks": list, "apptainer": False}
    env_scripts: bool
    inject_env: dict[str, str]
    env_script_text: str
    writable_tmpfs: bool
    session_size_mb: int
    overlays: list[str]
    init: bool
    fakeroot_multi: bool
    fake_ownership: bool  # seccomp: chown/mknod/set*id succeed as no-ops (single-id builds)
    app: str | None  # SCIF app whose environment is sourced too
    debug: bool
    allow_no_limits: bool
    run_as: list[int] | None  # [uid, gid, *groups] to switch to just before exec (build steps as USER)
    container_checks: list  # of Callable[[], None]: run in the new root before the payload
    apptainer: bool  # Apptainer's words and status (255) for a command that is missing or cannot run


class ContainerSpec(Record):
    __slots__ = ("process", "namespaces", "uid_mappings", "gid_mappings", "mounts", "hostname",
                 "root_readonly", "annotations", "extras", "hooks", "resources")
    _defaults = {"namespaces": lambda: [NS_USER, NS_MOUNT], "uid_mappings": list, "gid_mappings": list,
                 "mounts": list, "hostname": None, "root_readonly": True, "annotations": dict,
                 "extras": YurtExtras, "hooks": dict, "resources": None}
    process: Process
    namespaces: list[str]
    uid_mappings: list[IDMapping]
    gid_mappings: list[IDMapping]
    mounts: list[Mount]
    hostname: str | None
    root_readonly: bool
    annotations: dict[str, str]
    extras: YurtExtras
    hooks: dict[str, list[Hook]]  # OCI stage name (HOOK_STAGES) -> hooks, in order
    resources: Resources | None  # cgroup limits (linux.resources)

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
        hooks = {stage: [h.to_oci() for h in hs] for stage, hs in self.hooks.items() if hs}
        if hooks:
            doc["hooks"] = hooks
        if self.resources is not None and self.resources.any():
            doc["linux"]["resources"] = self.resources.to_oci()
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
            hooks={stage: [Hook.from_oci(h) for h in hs] for stage, hs in (doc.get("hooks") or {}).items() if hs},
            resources=Resources.from_oci(linux.get("resources") or {}),
        )


def _map_to_oci(m: IDMapping) -> dict:
    return {"containerID": m.container_id, "hostID": m.host_id, "size": m.size}


def _map_from_oci(d: dict) -> IDMapping:
    return IDMapping(int(d["containerID"]), int(d["hostID"]), int(d.get("size", 1)))
