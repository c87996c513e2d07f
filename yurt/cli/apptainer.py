"""Apptainer's action options, each mapped onto yurt's or refused in one line saying why.

``exec``/``run``/``shell``/``test`` and ``instance start`` accept every option of Apptainer 1.3's
(:data:`yurt.cli.actions.APPTAINER_FLAGS`).  The ones yurt has under another name or can build from
its own (``--mount``, ``--network none``, ``--compat``, ``--no-mount``, ``--scratch``...) are
translated here; the ones a rootless runtime cannot honour (``--add-caps``, ``--security``,
``--boot``, CNI networks...) are refused, never silently ignored.  Workflow engines pass these
(cwltool: ``--mount``, ``--no-eval``, ``--net --network none``, ``--userns``; Nextflow ``--no-home
--pid``), hence the care.

Loaded only when one of these options is given (:func:`yurt.cli.actions.plan_from`), so neither
``yurt exec`` nor ``apptainer exec`` with yurt's own options pays for it.
"""

from __future__ import annotations

import os

from yurt.errors import UsageError
from yurt.runtime.plan import Bind, make_bind

ROOTLESS = "yurt runs with your own privileges"
REFUSED = {
    "add_caps": f"{ROOTLESS} and cannot give the container capabilities you do not have",
    "security": "yurt applies no SELinux, AppArmor or seccomp profile of its own, nor uid:/gid: changes",
    "allow_setuid": f"{ROOTLESS}: setuid programs cannot gain privileges in a yurt container",
    "boot": "yurt does not boot an init system in the container",
    "fusemount": "yurt does not start FUSE mounts for the container; mount on the host and use --bind",
    "network_args": "yurt sets up no CNI network (a rootless container has loopback only)",
    "dns": "yurt sets up no CNI network; the container uses the host's /etc/resolv.conf",
    "netns_path": "yurt does not join other network namespaces",
    "apply_cgroups": "use --memory, --cpus, --pids-limit and --cpuset-cpus",
    "blkio_weight": "yurt sets no block I/O limits",
    "blkio_weight_device": "yurt sets no block I/O limits",
    "cpu_shares": "use --cpus",
    "cpuset_mems": "yurt sets no memory-node limits",
    "memory_reservation": "yurt sets no soft memory limit; use --memory",
    "memory_swap": "--memory limits memory and swap together",
    "oom_kill_disable": "yurt does not change the OOM killer",
    "dmtcp_launch": "yurt has no DMTCP checkpointing",
    "dmtcp_restart": "yurt has no DMTCP checkpointing",
    "nvccli": "use --nv: yurt binds the driver's libraries itself, without nvidia-container-cli",
    "intel_hpu": "yurt has no Intel Gaudi support; use --device with a CDI spec",
    "compat32": "yurt does not bind 32-bit GPU libraries",
    "containlibs": "use --bind for the libraries",
    "ignore_userns": "yurt needs a user namespace unless it runs as root",
    "docker_login": "log in once with 'yurt registry login', or set APPTAINER_DOCKER_USERNAME and _PASSWORD",
    "docker_host": "yurt does not talk to a Docker daemon; use docker-archive: (docker save) instead",
    "library": "yurt has no library:// client; use docker:// or oras://",
    "passphrase": "yurt cannot run encrypted images",
    "pem_path": "yurt cannot run encrypted images",
}
# Options whose meaning yurt has already: accepted and documented (README), nothing to do.
ALREADY = ("no_eval", "userns", "underlay", "runscript_timeout", "ignore_fakeroot_command")
NO_MOUNT_WORDS = ("proc", "sys", "dev", "devpts", "home", "tmp", "cwd", "hostfs", "bind-paths")
PROPAGATION = ("rslave", "slave")  # what yurt's binds have (the mount namespace is made rslave)

# Linux capabilities by name, for --drop-caps (capability.h; numbers are the kernel's ABI).
CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
    "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
    "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
    "CHECKPOINT_RESTORE",
)
PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 47, 4


class Later:
    """What the translation leaves for after the plan: mounts to add, checks to run inside the container."""

    def __init__(self) -> None:
        self.no_mount: list[str] = []
        self.scratch: list[str] = []
        self.umask: int | None = None
        self.drop: list[int] | None = None  # capability numbers to drop (None: none; all of them for --no-privs)
        self.no_env: list[str] = []


def prepare(values: dict, command: str) -> Later:
    """Refuse what yurt cannot do, then rewrite ``values`` into yurt's own options; return the rest."""
    for dest, why in REFUSED.items():
        if values.get(dest):
            raise UsageError(f"--{dest.replace('_', '-')} is not supported: {why}")
    later = Later()
    if values.get("tmpdir"):
        os.environ["YURT_TMPDIR"] = os.path.abspath(values["tmpdir"])
    if values.get("authfile"):
        os.environ["REGISTRY_AUTH_FILE"] = os.path.abspath(values["authfile"])
    if values.get("keep_privs") and os.geteuid() != 0:
        raise UsageError("--keep-privs is for root only", "a rootless container has no privileges to keep")
    if values.get("compat"):  # Apptainer's actions.go: what docker users expect
        values.update(containall=True, writable_tmpfs=True, no_init=True, no_umask=True)
    if values.get("no_pid") and values.get("containall"):
        values.update(containall=False, contain=True, ipc=True, cleanenv=True)
    if values.get("no_pid"):
        values["pid"] = False
    if values.get("no_nv"):
        values["nv"] = False
    if values.get("no_rocm"):
        values["rocm"] = False
    network = values.get("network")
    if network:
        kinds = [k.strip() for k in network.split(",")]
        if kinds != ["none"]:
            raise UsageError(f"--network {network}: not supported", "a rootless container has loopback only: "
                             "--net or --network none (bridge, ptp and CNI networks need root's network setup)")
        values["net"] = True
    values["bind"] = list(values.get("bind") or []) + [b for m in values.get("mount") or [] for b in mount_binds(m)]
    later.no_mount = no_mount_list(values.get("no_mount") or [])
    if "home" in later.no_mount:
        values["no_home"] = True
    later.scratch = [_scratch_path(d) for item in values.get("scratch") or [] for d in item.split(",") if d.strip()]
    if values.get("no_umask"):
        later.umask = 0o022
    if values.get("no_privs"):
        later.drop = list(range(len(CAPABILITIES)))
    elif values.get("drop_caps"):
        later.drop = capability_numbers(values["drop_caps"])
    later.no_env = [n.strip() for item in values.get("no_env") or [] for n in item.split(",") if n.strip()]
    return later


def after_plan(spec, later: Later, workdir: str | None) -> None:
    """Scratch directories, umask and capabilities, on the planned container."""
    from yurt.runtime.plan import check_bind_destination
    from yurt.spec import Mount

    for dest in later.scratch:
        check_bind_destination(dest, "--scratch directory")
        if workdir:  # Apptainer: under -W, scratch directories live there (kept after exit)
            src = os.path.join(os.path.abspath(workdir), "scratch", dest.strip("/").replace("/", "_"))
            os.makedirs(src, exist_ok=True)
            spec.mounts.append(Mount(dest, "bind", src))
        else:
            spec.mounts.append(Mount(dest, "tmpfs", None, ["mode=0700", f"uid={spec.process.uid}",
                                                          f"gid={spec.process.gid}"]))
    checks = spec.extras.container_checks
    if later.umask is not None:
        mask = later.umask
        checks.append(lambda: os.umask(mask))
    if later.drop:
        checks.append(_dropper(later.drop))


def _dropper(numbers: list[int]):
    """A check that takes capabilities out of the bounding set (and clears the ambient set), inside the
    container right before the payload starts: a root payload then has none of them after execve."""
    import errno

    from yurt import syscalls as sc
    from yurt.errors import RuntimeSetupError

    def drop() -> None:
        for option, arg in [(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)] + [(PR_CAPBSET_DROP, n) for n in numbers]:
            try:
                sc.prctl(option, arg)
            except OSError as e:
                if e.errno != errno.EINVAL:  # EINVAL: a capability (or ambient set) this kernel does not have
                    raise RuntimeSetupError(f"cannot drop capabilities: {e.strerror}")

    return drop


def capability_numbers(text: str) -> list[int]:
    """``CAP_NET_RAW,sys_admin`` -> their numbers; ``ALL`` is every one."""
    out: list[int] = []
    for raw in text.split(","):
        name = raw.strip().upper()
        if not name:
            continue
        if name == "ALL":
            return list(range(len(CAPABILITIES)))
        short = name[4:] if name.startswith("CAP_") else name
        if short not in CAPABILITIES:
            raise UsageError(f"--drop-caps: unknown capability {raw.strip()!r}", "e.g. CAP_NET_RAW,CAP_SYS_ADMIN")
        out.append(CAPABILITIES.index(short))
    return out


def no_mount_list(items: list[str]) -> list[str]:
    out: list[str] = []
    for item in items:
        for word in item.split(","):
            word = word.strip()
            if not word:
                continue
            if word not in NO_MOUNT_WORDS and not word.startswith("/"):
                raise UsageError(f"--no-mount {word!r}: unknown", f"use {', '.join(NO_MOUNT_WORDS)} or an "
                                 "absolute path of a site bind or system file (/etc/hosts)")
            out.append(word if not word.startswith("/") else "/" + word.strip("/"))
    return out


def _scratch_path(text: str) -> str:
    path = text.strip()
    if not path.startswith("/"):
        raise UsageError(f"--scratch {path!r}: must be an absolute path in the container")
    return path


def mount_binds(text: str) -> list[Bind]:
    """``--mount type=bind,source=S,target=D[,readonly]`` (CSV, as docker and Apptainer read it; one mount a
    line) -> the binds ``-B S:D[:ro]`` would make."""
    out = []
    for line in text.split("\n"):
        if not line.strip():
            continue
        fields = _csv_fields(line, text)
        src = dst = None
        ro = False
        for field in fields:
            key, eq, value = field.partition("=")
            key = key.strip()
            if key == "type":
                if value != "bind":
                    raise UsageError(f"--mount {text!r}: type {value!r} is not supported", "only type=bind")
            elif key in ("source", "src"):
                src = value
            elif key in ("destination", "dst", "target"):
                dst = value
            elif key in ("ro", "readonly"):
                ro = not eq or value.lower() in ("1", "true")
            elif key == "rw" and not eq:
                ro = False
            elif key == "bind-propagation":
                if value not in PROPAGATION:
                    raise UsageError(f"--mount {text!r}: bind-propagation={value} is not supported",
                                     "yurt's binds are rslave: host mounts below them appear in the container")
            else:
                raise UsageError(f"--mount {text!r}: unknown key {key!r}",
                                 "use type=bind,source=SRC,target=DST[,readonly]")
        if not src or not dst:
            raise UsageError(f"--mount {text!r}: needs a source and a destination",
                             "type=bind,source=SRC,target=DST")
        out.append(make_bind(src, dst, ro))  # made here: its paths may hold ':' and ',', which -B cannot say
    return out


def _csv_fields(line: str, text: str) -> list[str]:
    """One CSV record (RFC 4180 quoting, as Go's encoding/csv and Python's csv read it), without
    importing csv (and re) into yurt exec."""
    fields: list[str] = []
    field: list[str] = []
    i, quoted, n = 0, False, len(line)
    while i < n:
        c = line[i]
        if quoted:
            if c == '"' and i + 1 < n and line[i + 1] == '"':
                field.append('"')
                i += 1
            elif c == '"':
                quoted = False
            else:
                field.append(c)
        elif c == '"' and not field:
            quoted = True
        elif c == ",":
            fields.append("".join(field))
            field = []
        else:
            field.append(c)
        i += 1
    if quoted:
        raise UsageError(f"--mount {text!r}: a quote is not closed")
    fields.append("".join(field))
    return fields
