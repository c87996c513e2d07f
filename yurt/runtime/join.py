"""Joining a running container: ``exec instance://NAME`` and ``--sharens`` (the MPI ranks of a step).

One mechanism serves both.  A *holder* process builds a container (namespaces, mounts,
``pivot_root``) exactly as :func:`yurt.runtime.launcher.launch` would, then stays alive instead of
running a payload.  Anyone may then *join* it (:func:`exec_in`): enter its cgroup, ``setns`` into
its user namespace, then mount, IPC, UTS, network, PID and cgroup namespaces (each one it has
that differs from ours), which also puts us at its root, and ``execve`` the payload with the same
rules as a normal start: environment and working directory from
:func:`yurt.runtime.plan.plan_container`, ``PR_SET_NO_NEW_PRIVS``, env scripts, exit statuses.
In a PID namespace the joiner forks once so that the payload lives inside it; the joiner stays
outside as a signal-forwarding supervisor.

``--sharens`` (for MPI: one user namespace per node and job step, so that shared-memory
single-copy transfers (CMA, ``process_vm_readv``) work between ranks; Charliecloud's ``ch-run
--join`` and Apptainer's ``--sharens`` do the same).  Interface for other front ends::

    from yurt.runtime import join
    tag = join.default_tag(os.environ)          # SLURM_JOB_ID.SLURM_STEP_ID, PMIX_NAMESPACE, or None
    join.sharens_launch(spec, make_rootfs, tag)  # never returns, like launcher.launch(spec, rootfs)

All ranks with the same tag on one node share one container.  Under the tag's lock
(``<state>/sharens/<host>-<tag>.lock``) the first rank finds no live holder, starts one (its own
spec decides the mounts and namespaces; later ranks' mount options are not used) and records it
in ``<tag>.json``; every rank, the first included, then takes a shared ``flock`` on
``<tag>.ref`` and joins.  That descriptor is deliberately inherited by the payload: it is the
rank's reference.  The holder checks under the tag lock, twice a second, whether it can lock
``<tag>.ref`` exclusively; when it can, the last rank is gone, and it removes the tag's files and
exits, which takes the container down (mounts, squashfuse).  A rank arriving meanwhile waits for
the lock and starts a new holder.

State directory (:func:`state_dir`): ``$YURT_RUNTIMEDIR``, else ``$XDG_RUNTIME_DIR/yurt``, else
``/tmp/yurt-<uid>``; mode 0700, owned by the user (checked, never followed through a symlink).  One that
another user planted (a link, their directory, a file) is not used: yurt falls back to a private
``/tmp/yurt-<uid>-<random>`` that every process of the user finds, with one notice
(:func:`yurt.store.userdir.own_dir`).
"""

from __future__ import annotations

import fcntl  # these three are used after pivot_root, where nothing may be imported
import os
import signal

from yurt.errors import RuntimeSetupError, UsageError, YurtError
from yurt.record import Record
from yurt.runtime import supervisor
from yurt.spec import NS_PID, ContainerSpec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn

    from yurt.image.rootfs import Rootfs
    from yurt.runtime.cgroups import Cgroup

# /proc/PID/ns names in the order they are joined: the user namespace first (it grants the
# capabilities the others need), the mount namespace before the rest.
NS_ORDER = ("user", "mnt", "ipc", "uts", "net", "pid", "cgroup")
_SETNS_FLAGS = {"user": 0x10000000, "mnt": 0x00020000, "ipc": 0x08000000, "uts": 0x04000000,
                "net": 0x40000000, "pid": 0x20000000, "cgroup": 0x02000000}
HOLDER_POLL_S = 0.5


# --------------------------------------------------------------------------- state directory


def _private_dir(path: str) -> str:
    from yurt.store.userdir import own_dir

    return own_dir(path, "set YURT_RUNTIMEDIR to a private directory")


def state_dir(*sub: str) -> str:
    """yurt's per-user runtime state directory (created 0700 and checked), or a subdirectory of it."""
    base = os.environ.get("YURT_RUNTIMEDIR")
    if not base:
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        try:
            usable = bool(xdg) and os.path.isabs(xdg) and os.stat(xdg).st_uid == os.getuid()
        except OSError:
            usable = False
        base = os.path.join(xdg, "yurt") if usable and xdg else f"/tmp/yurt-{os.getuid()}"
    path = _private_dir(os.path.abspath(base))
    for part in sub:
        path = _private_dir(os.path.join(path, part))
    return path


def write_json(path: str, doc: dict) -> None:
    """Replace a small state file atomically (readers never see half of it)."""
    import json

    from yurt.store.atomic import write_bytes

    write_bytes(path, json.dumps(doc, indent=1).encode(), 0o600)


def read_json(path: str) -> dict | None:
    import json

    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


# --------------------------------------------------------------------------- a running container


class Target(Record):
    """A process to join: its pid, start time (against pid reuse), namespace inodes, cgroups."""

    __slots__ = ("pid", "start", "ns", "cgroups")
    _defaults = {"ns": dict, "cgroups": list}
    pid: int
    start: int
    ns: dict[str, int]
    cgroups: list[str]

    def to_json(self) -> dict:
        return {"pid": self.pid, "start": self.start, "ns": dict(self.ns), "cgroups": list(self.cgroups)}

    @classmethod
    def from_json(cls, doc: dict) -> Target | None:
        try:
            return cls(int(doc["pid"]), int(doc["start"]), {str(k): int(v) for k, v in doc["ns"].items()},
                       [str(c) for c in doc.get("cgroups") or []])
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


def start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/PID/stat`` (clock ticks since boot), or None when gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2:].split()
    if not fields or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def capture(pid: int, cgroups: list[str] | None = None) -> Target:
    """Record what identifies ``pid``'s container now."""
    start = start_time(pid)
    if start is None:
        raise RuntimeSetupError(f"the container process {pid} is gone")
    ns = {name: os.stat(f"/proc/{pid}/ns/{name}").st_ino for name in NS_ORDER}
    return Target(pid, start, ns, list(cgroups or []))


def alive(target: Target) -> bool:
    """Whether the recorded process still runs (same start time, same namespaces)."""
    if start_time(target.pid) != target.start:
        return False
    try:
        return all(os.stat(f"/proc/{target.pid}/ns/{n}").st_ino == ino for n, ino in target.ns.items())
    except OSError:
        return False


def _own_ns(name: str) -> int:
    return os.stat(f"/proc/self/ns/{name}").st_ino


def exec_in(spec: ContainerSpec, target: Target) -> NoReturn:
    """Join ``target``'s container and run ``spec.process`` there; never returns.

    Only the process part of ``spec`` (args, environment, cwd, no_new_privileges, env scripts,
    fake ownership) is used: the mounts and namespaces are the target's.
    """
    from yurt import syscalls as sc
    from yurt.runtime import launcher, supervisor

    spec.hostname = None  # the container's hostname was set by its creator
    spec.hooks = {}  # OCI hooks belong to a container's creation, not to joining it
    plan = launcher._ExecPlan(spec)  # everything exec_payload needs, while the host's modules are reachable
    fds: list[tuple[str, int]] = []
    try:
        if target.cgroups:
            from yurt.runtime.cgroups import Cgroup

            try:
                Cgroup(target.cgroups).join()
            except OSError as e:
                raise RuntimeSetupError(f"cannot enter the container's cgroup: {e.strerror}")
        for name in NS_ORDER:
            if name in target.ns and target.ns[name] != _own_ns(name):
                fd = os.open(f"/proc/{target.pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)
                fds.append((name, fd))
                if os.fstat(fd).st_ino != target.ns[name]:
                    raise RuntimeSetupError("the container exited while joining it", "start it again")
        if start_time(target.pid) != target.start:
            raise RuntimeSetupError("the container exited while joining it", "start it again")
    except OSError as e:
        for _, fd in fds:
            os.close(fd)
        raise RuntimeSetupError(f"cannot open the container's namespaces: {e.strerror}")
    for name, fd in fds:
        try:
            sc.setns(fd, _SETNS_FLAGS[name])
        except OSError as e:
            raise RuntimeSetupError(f"cannot join the container's {name} namespace: {e.strerror}")
        finally:
            os.close(fd)
    if any(name == "mnt" for name, _ in fds):
        os.chdir("/")  # setns put our root at the container's; leave no host directory as cwd
    if any(name == "pid" for name, _ in fds):
        old_mask = supervisor.block_signals()
        child = os.fork()
        if child:
            os._exit(supervisor.supervise(child))
        launcher.exec_payload(spec, plan, old_mask)
    launcher.exec_payload(spec, plan, None)


# --------------------------------------------------------------------------- holders


class HolderOptions(Record):
    """How a holder lives: ``kind`` ``instance`` (init of a PID namespace, runs the start script,
    stops on SIGTERM) or ``sharens`` (exits after the last rank); logs for instances; the tag files."""

    __slots__ = ("kind", "stdout", "stderr", "cgroup", "dir_fd", "tag_key", "close_fds")
    _defaults = {"stdout": None, "stderr": None, "cgroup": None, "dir_fd": -1, "tag_key": "", "close_fds": list}
    kind: str
    stdout: str | None
    stderr: str | None
    cgroup: Cgroup | None
    dir_fd: int
    tag_key: str
    close_fds: list[int]  # the starter's lock descriptors: the holder must not keep them locked


def refuse_hooks(spec: ContainerSpec, what: str) -> None:
    """OCI hooks are not run for held containers yet: refuse rather than skip the site's hooks silently."""
    paths = sorted({h.path for hs in spec.hooks.values() for h in hs})
    if paths:
        raise UsageError(f"{what} cannot run the OCI hooks this container gets ({', '.join(paths)}) yet",
                         f"run it without {what}, or leave those hooks out (see yurt/runtime/hooks.py)")


def spawn_holder(spec: ContainerSpec, rootfs: Rootfs, opts: HolderOptions) -> int:
    """Start a detached holder of a new container; return the pid to join once it is ready."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            if os.fork():  # the holder must be nobody's child: it outlives the process starting it
                os._exit(0)
            _holder_main(spec, rootfs, opts, w)
        except YurtError as e:
            _tell(w, f"E{e}")
        except BaseException as e:  # noqa: BLE001 - a forked child never returns into the caller
            _tell(w, f"Econtainer set-up failed: {type(e).__name__}: {e}")
        os._exit(255)
    os.close(w)
    rootfs.abandon()  # the holder keeps its own copies (loop device)
    chunks = []
    while True:
        data = os.read(r, 65536)
        if not data:
            break
        chunks.append(data)
    os.close(r)
    os.waitpid(pid, 0)
    holder, ready, error = 0, False, ""
    for line in b"".join(chunks).decode(errors="replace").split("\0"):
        if line.startswith("P"):
            holder = int(line[1:])
        elif line == "R":
            ready = True
        elif line.startswith("E"):
            error = line[1:]
    if not ready or not holder:
        raise RuntimeSetupError(error or "the container could not be started (no reason given)")
    return holder


def _tell(fd: int, message: str) -> None:
    try:
        os.write(fd, message.encode() + b"\0")
    except OSError:
        pass


def _holder_main(spec: ContainerSpec, rootfs: Rootfs, opts: HolderOptions, w: int) -> None:
    from yurt.runtime import launcher
    from yurt.runtime.mounts import MountExecutor

    for fd in opts.close_fds:
        os.close(fd)
    os.setsid()  # no controlling terminal: a Ctrl-C or a logout of the starter does not reach it
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    out = os.open(opts.stdout, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) if opts.stdout else null
    err = os.open(opts.stderr, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) if opts.stderr else null
    os.dup2(out, 1)
    if not spec.extras.debug or opts.stderr:
        os.dup2(err, 2)
    for name in os.listdir("/proc/self/fd"):  # descriptors handed to the starter (PMI_FD...) are not ours
        fd = int(name)
        if fd > 2 and fd not in (w, out, err, null, opts.dir_fd):
            try:
                if os.get_inheritable(fd):
                    os.close(fd)
            except OSError:
                pass
    spec.hooks = {}  # not run for shared containers yet: their runtime side has no process to live in
    plan = launcher._ExecPlan(spec)
    old_mask = supervisor.block_signals()
    if opts.cgroup is not None:
        opts.cgroup.join()
    launcher.create_namespaces(spec, rootfs)
    if spec.has(NS_PID):
        init = os.fork()
        if init:
            _tell(w, f"P{init}")
            os._exit(0)
    else:
        _tell(w, f"P{os.getpid()}")
    MountExecutor(spec, rootfs).run()
    if opts.kind == "instance":
        child = 0
        if os.path.exists(spec.process.args[0]):
            child = os.fork()
            if child == 0:
                os.close(w)
                launcher.exec_payload(spec, plan, old_mask)
        _tell(w, "R")
        os.close(w)
        os.dup2(err, 2)
        _instance_init(child)
    _tell(w, "R")
    os.close(w)
    os.dup2(err, 2)
    _sharens_holder(opts)


_STOP_SIGNALS = (1, 2, 3, 15)  # SIGHUP, SIGINT, SIGQUIT, SIGTERM


def _reap(child: int) -> tuple[bool, int | None]:
    """Reap every exited child; (any children left, status of ``child`` if it exited)."""
    status = None
    while True:
        try:
            pid, st = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False, status
        if pid == 0:
            return True, status
        if pid == child:
            status = os.waitstatus_to_exitcode(st)


def _instance_init(child: int) -> NoReturn:
    """PID 1 of an instance: reap, relay signals; a stop signal goes to everyone, then we leave."""
    stopping = False
    while True:
        info = signal.sigwaitinfo(supervisor.WATCHED)
        sig = info.si_signo
        if sig == signal.SIGCHLD:
            left, status = _reap(child)
            if status is not None:
                os.write(2, f"yurt: the start script exited with status {status}\n".encode())
                child = 0
            if stopping and not left:
                os._exit(0)
            continue
        if sig in _STOP_SIGNALS:
            stopping = True
            if os.getpid() == 1:  # kill(-1) from a PID namespace's init reaches only the container
                try:
                    os.kill(-1, sig)
                except ProcessLookupError:
                    pass
            left, _ = _reap(child)
            if not left:
                os._exit(0)
        elif child:
            try:
                os.kill(child, sig)
            except ProcessLookupError:
                pass


def _sharens_holder(opts: HolderOptions) -> NoReturn:
    """Wait until no rank holds the tag's reference lock, then clean up under the tag lock and exit."""
    d, key = opts.dir_fd, opts.tag_key
    ref = os.open(f"{key}.ref", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600, dir_fd=d)
    while True:
        info = signal.sigtimedwait(supervisor.WATCHED, HOLDER_POLL_S)
        if info is not None and info.si_signo in _STOP_SIGNALS:
            if os.getpid() == 1:  # a PID namespace's init: kill(-1) reaches only the container's processes
                try:
                    os.kill(-1, info.si_signo)
                except OSError:
                    pass
            break
        _reap(0)
        lock = os.open(f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600, dir_fd=d)
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            fcntl.flock(ref, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            continue
        for suffix in (".json", ".ref", ".lock"):  # still holding the lock: ranks waiting re-check the file
            try:
                os.unlink(key + suffix, dir_fd=d)
            except OSError:
                pass
        os._exit(0)
    for suffix in (".json", ".ref"):
        try:
            os.unlink(key + suffix, dir_fd=d)
        except OSError:
            pass
    os._exit(0)


# --------------------------------------------------------------------------- --sharens


def default_tag(env: dict[str, str] | os._Environ[str]) -> str | None:
    """The job step all ranks of one launch share: Slurm's job and step, else the PMIx namespace."""
    job = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
    if job:
        return f"{job}.{env.get('SLURM_STEP_ID') or env.get('SLURM_STEPID') or 'batch'}"
    for name in ("PMIX_NAMESPACE", "OMPI_MCA_ess_base_jobid", "PMI_KVSNAME"):
        if env.get(name):
            return env[name]
    return None


def tag_key(tag: str) -> str:
    """A file-name-safe key for this node and tag."""
    raw = f"{os.uname().nodename}-{tag}"
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in raw)
    if len(safe) > 100 or safe != raw:
        import hashlib

        safe = safe[:60] + "-" + hashlib.sha256(raw.encode()).hexdigest()[:16]
    return safe


def sharens_launch(spec: ContainerSpec, make_rootfs: Callable[[], Rootfs], tag: str | None) -> NoReturn:
    """Join (creating it if needed) the container shared by every process started with ``tag``."""

    from yurt.store.locks import acquire

    if not tag:
        raise UsageError("--sharens needs a tag outside Slurm and PMIx launches", "add --sharens-tag NAME")
    refuse_hooks(spec, "--sharens")
    if spec.resources is not None and spec.resources.any():
        raise UsageError("resource limits cannot be combined with --sharens",
                         "limit the job through the resource manager instead")
    directory = state_dir("sharens")
    key = tag_key(tag)
    base = os.path.join(directory, key)
    lock = acquire(base + ".lock", timeout=600, what=f"the shared container of {tag}")
    try:
        target = Target.from_json(read_json(base + ".json") or {})
        if target is None or not alive(target):
            for suffix in (".json", ".ref"):
                try:
                    os.unlink(base + suffix)
                except FileNotFoundError:
                    pass
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                pid = spawn_holder(spec, make_rootfs(),
                                   HolderOptions("sharens", dir_fd=dir_fd, tag_key=key, close_fds=[lock]))
            finally:
                os.close(dir_fd)
            target = capture(pid)
            write_json(base + ".json", {"tag": tag, **target.to_json()})
        ref = os.open(base + ".ref", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(ref, fcntl.LOCK_SH)
        os.set_inheritable(ref, True)  # the payload holds our reference for as long as it lives
    finally:
        os.close(lock)
    exec_in(spec, target)
