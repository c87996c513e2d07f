"""Resource limits (``--memory``, ``--cpus``, ``--pids-limit``, ``--cpuset``) through cgroups, without root.

Where the limits go: for each controller a limit needs, the hierarchy that has it, cgroup v1 (one
hierarchy per controller, as on hybrid machines) or v2 (the unified tree).  Starting from the
cgroup yurt runs in (``/proc/self/cgroup``) and walking up, the first cgroup yurt may write is
the parent of a new ``yurt-<pid>-<random>`` cgroup for the container:

* as root, its own cgroup;
* as a user, a *delegated* subtree: systemd's ``user@UID.service`` or a scope started with
  ``systemd-run --user --scope -p Delegate=yes``, a job cgroup a resource manager hands to the
  user, or a v1 directory an administrator ``chown``-ed to the user.  v2 also needs the controllers
  enabled in the parent's ``cgroup.subtree_control`` (yurt enables them when the parent holds no
  processes, as the kernel requires).

When a limit cannot be applied, :class:`CgroupError` says which and why; with
``--allow-no-limits`` it is a warning instead.  A limit is never dropped silently.

Life cycle (:func:`enter`, called by the launcher before any namespace exists): the cgroup is
created and its limits written on the host; yurt forks; the child writes itself into the
cgroup and goes on to build the container, so the payload and everything it starts are inside;
the parent stays outside as a supervisor (forwarding signals, returning the exit status), then
kills whatever is left in the cgroup and removes it.  The memory limit includes swap.
"""

from __future__ import annotations

import os

from yurt.errors import RuntimeSetupError, UsageError
from yurt.record import Record
from yurt.runtime.idmap import write_control_file as _write
from yurt.spec import ContainerSpec, Resources

TYPE_CHECKING = False
if TYPE_CHECKING:
    from yurt.image.rootfs import Rootfs

# Resource -> (controller, flag that asked for it).
CONTROLLERS = {"memory": ("memory", "--memory"), "cpus": ("cpu", "--cpus"), "pids": ("pids", "--pids-limit"),
               "cpuset": ("cpuset", "--cpuset")}
_SUFFIXES = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class CgroupError(RuntimeSetupError):
    """A requested limit cannot be applied here."""


# --------------------------------------------------------------------------- flags -> Resources


def parse_memory(text: str) -> int:
    """``512M``, ``2g``, ``1048576``: bytes (binary units, as docker and Apptainer read them)."""
    raw = text.strip().lower()
    if raw.endswith("ib"):
        raw = raw[:-2]
    elif raw.endswith("b") and len(raw) > 1 and raw[-2] in _SUFFIXES:
        raw = raw[:-1]
    unit = raw[-1:] if raw[-1:] in _SUFFIXES and not raw[-1:].isdigit() else ""
    number = raw[: len(raw) - len(unit)]
    try:
        value = float(number) * _SUFFIXES[unit]
    except ValueError:
        value = float("nan")
    if value != value or value in (float("inf"), float("-inf")) or value > 1 << 62:  # nan, inf, absurd
        raise UsageError(f"bad memory size {text!r}", "use a number with an optional unit: 512M, 2G")
    if value < 1 << 20:
        raise UsageError(f"--memory {text} is too small", "give at least 1M")
    return int(value)


def parse_cpus(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"bad --cpus value {text!r}", "give a number of CPUs, e.g. 1.5")
    if not 0.01 <= value <= 1 << 20:
        raise UsageError(f"--cpus {text} is out of range", "give at least 0.01")
    return value


def parse_cpuset(text: str) -> str:
    """``0-3,6``: validated CPU list syntax (the kernel checks the CPUs exist)."""
    raw = text.strip()
    for part in raw.split(","):
        lo, dash, hi = part.partition("-")
        if not lo.isdigit() or (dash and (not hi.isdigit() or int(hi) < int(lo))):
            raise UsageError(f"bad --cpuset {text!r}", "use a CPU list such as 0-3,6")
    return raw


def resources_from_flags(memory: str | None, cpus: str | None, pids: int | None,
                         cpuset: str | None) -> Resources | None:
    """The limits asked for on the command line, or None when there are none."""
    if pids is not None and pids < 1:
        raise UsageError(f"--pids-limit {pids} is out of range", "give at least 1")
    res = Resources(memory=parse_memory(memory) if memory else None, cpus=parse_cpus(cpus) if cpus else None,
                    pids=pids, cpuset=parse_cpuset(cpuset) if cpuset else None)
    return res if res.any() else None


def limit_files(version: int, res: Resources) -> dict[str, list[tuple[str, str]]]:
    """controller -> the files to write, in order; a name starting with ``?`` may be absent."""
    out: dict[str, list[tuple[str, str]]] = {}
    if res.memory is not None:
        if version == 2:
            out["memory"] = [("memory.max", str(res.memory)), ("?memory.swap.max", "0")]
        else:
            out["memory"] = [("memory.limit_in_bytes", str(res.memory)),
                             ("?memory.memsw.limit_in_bytes", str(res.memory))]
    if res.cpus is not None:
        quota = max(int(res.cpus * Resources.CPU_PERIOD), 1000)
        if version == 2:
            out["cpu"] = [("cpu.max", f"{quota} {Resources.CPU_PERIOD}")]
        else:
            out["cpu"] = [("cpu.cfs_period_us", str(Resources.CPU_PERIOD)), ("cpu.cfs_quota_us", str(quota))]
    if res.pids is not None:
        out["pids"] = [("pids.max", str(res.pids))]
    if res.cpuset is not None:
        # v1 needs cpuset.mems too before a task may join: copied from the parent when written.
        out["cpuset"] = [("cpuset.cpus", res.cpuset)] + ([] if version == 2 else [("cpuset.mems", "")])
    return out


# --------------------------------------------------------------------------- where the hierarchies are


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """``/proc/self/cgroup`` -> {controller: path}; the v2 tree is the key ``""``."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            out[""] = path
        for c in controllers.split(","):
            if c and not c.startswith("name="):
                out[c] = path
    return out


def parse_cgroup_mounts(mountinfo: str) -> dict[str, str]:
    """``/proc/self/mountinfo`` -> {controller: v1 mount point}, and ``""`` -> the v2 mount point.

    Only mounts of a hierarchy's root (``/``) count: a bind of a sub-cgroup would misplace paths.
    """
    out: dict[str, str] = {}
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3 or fields[3] != "/":
            continue
        point = fields[4].replace("\\040", " ")
        if rfields[0] == "cgroup2":
            out.setdefault("", point)
        elif rfields[0] == "cgroup":
            for opt in rfields[2].split(","):
                if opt in ("memory", "cpu", "pids", "cpuset", "cpuacct", "blkio", "devices", "freezer", "hugetlb",
                           "net_cls", "net_prio", "perf_event", "rdma", "misc"):
                    out.setdefault(opt, point)
    return out


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _writable(path: str) -> bool:
    return os.access(path, os.W_OK)


class Group(Record):
    """One cgroup yurt makes: ``parent/name`` in hierarchy ``version`` for ``controllers``."""

    __slots__ = ("version", "parent", "name", "controllers", "enable", "files")
    _defaults = {"enable": list, "files": list}
    version: int
    parent: str
    name: str
    controllers: list[str]
    enable: list[str]  # v2: to add to parent's cgroup.subtree_control first
    files: list[tuple[str, str]]

    @property
    def path(self) -> str:
        return os.path.join(self.parent, self.name)


def _ancestors(mount: str, path: str) -> list[str]:
    """``mount + path``, then each parent up to the hierarchy's root."""
    parts = [p for p in path.split("/") if p]
    return [os.path.join(mount, *parts[:i]) for i in range(len(parts), -1, -1)]


def find_v1_parent(mount: str, path: str) -> str | None:
    """Deepest cgroup (ours or an ancestor) in which we may create a child and move ourselves."""
    for cand in _ancestors(mount, path):
        if _writable(cand) and _writable(os.path.join(cand, "cgroup.procs")):
            return cand
    return None


def find_v2_parent(mount: str, path: str, controllers: list[str]) -> tuple[str | None, list[str], str]:
    """(parent, controllers to enable in it, why none) for the unified tree.

    Moving a process needs write access to ``cgroup.procs`` of the common ancestor of its old
    and new cgroup, which the walk guarantees (the parent is ours or an ancestor of ours).
    """
    why = "no cgroup you may write (not delegated to you)"
    for cand in _ancestors(mount, path):
        if not (_writable(cand) and _writable(os.path.join(cand, "cgroup.procs"))):
            break  # above a cgroup we cannot write, we could not move ourselves anyway
        try:
            available = _read(os.path.join(cand, "cgroup.controllers")).split()
            enabled = _read(os.path.join(cand, "cgroup.subtree_control")).split()
        except OSError:
            continue
        lacking = [c for c in controllers if c not in available]
        if lacking:
            why = f"controller {', '.join(lacking)} not available in the delegated cgroup {cand}"
            continue  # a writable parent may have it (enabled below it once it holds no processes)
        todo = [c for c in controllers if c not in enabled]
        if not todo:
            return cand, [], ""
        # The kernel enables controllers only where no process lives, the root cgroup excepted.
        if _writable(os.path.join(cand, "cgroup.subtree_control")) and (cand == mount or not _has_processes(cand)):
            return cand, todo, ""
        why = f"{cand} holds processes, so the kernel will not enable {', '.join(todo)} below it"
    return None, [], why


def _has_processes(cgroup: str) -> bool:
    try:
        return bool(_read(os.path.join(cgroup, "cgroup.procs")).strip())
    except OSError:
        return True


def plan_groups(res: Resources, *, proc_cgroup: str | None = None,
                mountinfo: str | None = None) -> tuple[list[Group], list[str]]:
    """The cgroups to make for ``res``, and one line per limit that cannot be applied."""
    membership = parse_proc_cgroup(proc_cgroup if proc_cgroup is not None else _read("/proc/self/cgroup"))
    mounts = parse_cgroup_mounts(mountinfo if mountinfo is not None else _read("/proc/self/mountinfo"))
    name = f"yurt-{os.getpid()}-{os.urandom(3).hex()}"
    v2_controllers: list[str] = []
    v2_root = mounts.get("")
    if v2_root:
        try:
            v2_controllers = _read(os.path.join(v2_root, "cgroup.controllers")).split()
        except OSError:
            pass
    wanted = {CONTROLLERS[k][0]: CONTROLLERS[k][1] for k in CONTROLLERS if getattr(res, k) is not None}
    groups: dict[tuple[int, str], Group] = {}
    problems: list[str] = []
    v2_wanted: list[str] = []
    for controller, flag in wanted.items():
        if controller in mounts and controller in membership:
            parent = find_v1_parent(mounts[controller], membership[controller])
            if parent is None:
                problems.append(f"{flag}: no writable cgroup v1 {controller} hierarchy for you under "
                                f"{mounts[controller]} (you are in {membership[controller]})")
                continue
            key = (1, parent)
            g = groups.setdefault(key, Group(1, parent, name, []))
            g.controllers.append(controller)
            g.files.extend(limit_files(1, res)[controller])
        elif v2_root and controller in v2_controllers and "" in membership:
            v2_wanted.append(controller)
        else:
            problems.append(f"{flag}: the {controller} controller is not available (cgroup v1 or v2) on this machine")
    if v2_wanted and v2_root:
        parent, enable, why = find_v2_parent(v2_root, membership[""], v2_wanted)
        if parent is None:
            for c in v2_wanted:
                problems.append(f"{wanted[c]}: {why}")
        else:
            files = limit_files(2, res)
            groups[(2, parent)] = Group(2, parent, name, list(v2_wanted), enable,
                                        [f for c in v2_wanted for f in files[c]])
    return list(groups.values()), problems


# --------------------------------------------------------------------------- acting on the plan


class Cgroup:
    """The cgroups of one container: join them, see whether memory ran out, remove them."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def join(self, pid: int | None = None) -> None:
        for path in self.paths:
            _write(os.path.join(path, "cgroup.procs"), str(pid or os.getpid()))

    def oom_killed(self) -> bool:
        for path in self.paths:
            for name in ("memory.events", "memory.oom_control"):
                try:
                    for line in _read(os.path.join(path, name)).splitlines():
                        key, _, value = line.partition(" ")
                        if key == "oom_kill" and int(value or 0) > 0:
                            return True
                except (OSError, ValueError):
                    continue
        return False

    def destroy(self, timeout: float = 10.0) -> bool:
        """Kill what is left inside and remove the cgroups; True when all are gone."""
        import signal
        import time

        deadline = time.monotonic() + timeout
        done = True
        for path in self.paths:
            if not os.path.isdir(path):
                continue
            try:
                _write(os.path.join(path, "cgroup.kill"), "1")  # v2, Linux >= 5.14
            except OSError:
                pass
            while True:
                try:
                    pids = [int(p) for p in _read(os.path.join(path, "cgroup.procs")).split()]
                except OSError:
                    pids = []
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        done = False
                        break
                    time.sleep(0.02)
        return done


def create(groups: list[Group]) -> tuple[Cgroup, list[str]]:
    """Make the cgroups and write the limits; returns what was made and one line per failure."""
    made: list[str] = []
    problems: list[str] = []
    for g in groups:
        try:
            for c in g.enable:
                _write(os.path.join(g.parent, "cgroup.subtree_control"), f"+{c}")
            os.mkdir(g.path, 0o755)
        except OSError as e:
            problems.append(f"{', '.join(g.controllers)}: cannot create a cgroup in {g.parent}: {e.strerror}")
            continue
        made.append(g.path)
        for name, value in g.files:
            optional = name.startswith("?")
            name = name.lstrip("?")
            if name == "cpuset.mems" and not value:
                try:
                    value = _read(os.path.join(g.parent, "cpuset.mems")).strip()
                except OSError as e:
                    problems.append(f"cpuset: cannot read {g.parent}/cpuset.mems: {e.strerror}")
                    continue
            try:
                _write(os.path.join(g.path, name), value)
            except OSError as e:
                if not (optional and e.errno in (2, 13)):
                    problems.append(f"cannot set {name}={value} in {g.path}: {e.strerror}")
    return Cgroup(made), problems


def _report(problems: list[str], allow: bool) -> None:
    if not problems:
        return
    if not allow:
        raise CgroupError("cannot apply resource limits: " + "; ".join(problems),
                          "run as root, inside a delegated cgroup (e.g. systemd-run --user --scope -p Delegate=yes "
                          "yurt ...), or add --allow-no-limits to run without them")
    from yurt.image.rootfs import notice

    for p in problems:
        notice(f"warning: limit NOT applied (--allow-no-limits): {p}")


def apply(spec: ContainerSpec) -> Cgroup | None:
    """Create the container's cgroups with their limits (before any namespace exists)."""
    res = spec.resources
    if res is None or not res.any():
        return None
    allow = spec.extras.allow_no_limits
    try:
        groups, problems = plan_groups(res)
    except OSError as e:
        groups, problems = [], [f"cannot read the cgroup layout: {e.strerror}"]
    _report(problems, allow)
    cg, problems = create(groups)
    if problems and not allow:
        cg.destroy()
    _report(problems, allow)
    if spec.extras.debug:
        os.write(2, f"yurt: debug: cgroups {' '.join(cg.paths) or '(none)'}\n".encode())
    return cg if cg.paths else None


def enter(spec: ContainerSpec, rootfs: Rootfs, on_parent=None) -> None:
    """Put the rest of the launch into the container's cgroup; the caller stays outside to clean up.

    Returns in the child (inside the cgroup).  The parent never returns: it calls ``on_parent``
    (e.g. to close its copy of the OCI hooks' channel), waits for the child, forwarding
    signals, removes the cgroup and exits with the child's status.
    """
    cg = apply(spec)
    if cg is None:
        return
    from yurt.runtime import supervisor

    old_mask = supervisor.block_signals()
    pid = os.fork()
    if pid == 0:
        supervisor.restore_mask(old_mask)
        try:
            cg.join()
        except OSError as e:
            raise CgroupError(f"cannot move into the container's cgroup: {e.strerror}")
        return
    rootfs.abandon()
    if on_parent is not None:
        on_parent()
    status = supervisor.supervise(pid)
    if cg.oom_killed():
        from yurt.image.rootfs import notice

        notice("the container ran out of memory (--memory) and was killed")
    cg.destroy()
    os._exit(status)
