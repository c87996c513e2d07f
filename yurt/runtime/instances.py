"""Instances: named containers that run in the background (``yurt instance start|list|stop``).

An instance is a holder (:mod:`yurt.runtime.join`) in its own PID namespace: its PID 1 runs the
image's ``/.singularity.d/startscript`` (with the arguments given at start) when there is one,
otherwise it just waits; it reaps orphans and, on a stop signal, passes the signal to every
process of the container and exits once its own children are gone (the kernel then kills what
is left in the namespace, and the mounts and the squashfuse helper go with it).  It is started
in its own session with stdio on log files, so it survives the shell that started it.

State, per user and node, in ``<state dir>/instances/NAME.json`` (see
:func:`yurt.runtime.join.state_dir`): the holder's pid, start time and namespace inodes (so a
reused pid is never mistaken for it), the image, the start time, the log files and the cgroups
of its resource limits.  Logs are ``<state dir>/logs/NAME.out`` and ``.err`` and are kept after
a stop, as Apptainer keeps them.  A record whose process is gone is removed (with its cgroups)
by the next ``list``, ``start`` or ``stop``.  Every change happens under ``NAME.lock``.
"""

from __future__ import annotations

import os
import time

from yurt.errors import RuntimeSetupError, UsageError
from yurt.runtime import join
from yurt.spec import NS_PID, ContainerSpec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from yurt.image.rootfs import Rootfs

STARTSCRIPT = "/.singularity.d/startscript"
SCHEME = "instance://"


def check_name(name: str) -> str:
    if not name or len(name) > 128 or not (name[0].isalnum()) or not all(
            c.isascii() and (c.isalnum() or c in "._-") for c in name):
        raise UsageError(f"bad instance name {name!r}", "use letters, digits and ._- (starting with a letter or digit)")
    return name


def _paths(name: str) -> tuple[str, str, str]:
    d = join.state_dir("instances")
    return os.path.join(d, name + ".json"), os.path.join(d, name + ".lock"), join.state_dir("logs")


def _lock(lockfile: str, name: str) -> int:
    from yurt.store.locks import acquire

    return acquire(lockfile, timeout=60, what=f"instance {name}")


def _cleanup(name: str, doc: dict | None) -> None:
    """Remove a record and the cgroups of an instance whose process is gone (lock held)."""
    state, _, _ = _paths(name)
    if doc and doc.get("cgroups"):
        from yurt.runtime.cgroups import Cgroup

        Cgroup([str(c) for c in doc["cgroups"]]).destroy()
    try:
        os.unlink(state)
    except FileNotFoundError:
        pass


def _live(name: str) -> tuple[dict | None, join.Target | None]:
    """The record of ``name`` and its target when the instance still runs (lock held)."""
    state, _, _ = _paths(name)
    doc = join.read_json(state)
    if doc is None:
        return None, None
    target = join.Target.from_json(doc)
    if target is None or not join.alive(target):
        _cleanup(name, doc)
        return None, None
    return doc, target


def start(spec: ContainerSpec, make_rootfs: Callable[[], Rootfs], name: str, image: str,
          options: dict | None = None, image_ref: str | None = None) -> dict:
    """Start instance ``name``; returns its record once the container is up.

    ``options``: the start options a later join must plan with too (identity, home, containment).
    """
    check_name(name)
    join.refuse_hooks(spec, "yurt instance")
    if NS_PID not in spec.namespaces:
        spec.namespaces.append(NS_PID)
    spec.process.env.update({"YURT_INSTANCE": name, "APPTAINER_INSTANCE": name, "SINGULARITY_INSTANCE": name})
    state, lockfile, logs = _paths(name)
    lock = _lock(lockfile, name)
    try:
        if _live(name)[0] is not None:
            raise UsageError(f"instance {name} already exists", f"stop it first: yurt instance stop {name}")
        out, err = os.path.join(logs, name + ".out"), os.path.join(logs, name + ".err")
        for log in (out, err):
            os.close(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600))
        cgroup = None
        if spec.resources is not None and spec.resources.any():
            from yurt.runtime import cgroups

            cgroup = cgroups.apply(spec)
        try:
            opts = join.HolderOptions("instance", out, err, cgroup, close_fds=[lock])
            pid = join.spawn_holder(spec, make_rootfs(), opts)
            target = join.capture(pid, cgroup.paths if cgroup else [])
        except BaseException:
            if cgroup is not None:
                cgroup.destroy()
            raise
        doc = {"name": name, **target.to_json(), "image": image, "image_ref": image_ref or image,
               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "user": os.getuid(), "stdout": out, "stderr": err, "args": list(spec.process.args[1:]),
               "options": dict(options or {})}
        join.write_json(state, doc)
        return doc
    finally:
        os.close(lock)


def listing() -> list[dict]:
    """Records of the running instances, by name; stale ones are cleaned up on the way."""
    d = join.state_dir("instances")
    out = []
    for entry in sorted(os.listdir(d)):
        if not entry.endswith(".json"):
            continue
        name = entry[:-5]
        lockfile = os.path.join(d, name + ".lock")
        lock = _lock(lockfile, name)
        try:
            doc, _ = _live(name)
            if doc is None:
                _unlink_quiet(lockfile)  # while holding it: a waiter notices and locks a new file
        finally:
            os.close(lock)
        if doc is not None:
            out.append(doc)
    return out


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def target_of(name: str) -> tuple[dict, join.Target]:
    """The record of the running instance ``name`` and the target to join."""
    check_name(name)
    state, lockfile, _ = _paths(name)
    lock = _lock(lockfile, name)
    try:
        doc, target = _live(name)
    finally:
        os.close(lock)
    if target is None or doc is None:
        raise UsageError(f"no instance named {name} is running", "see 'yurt instance list'")
    return doc, target


def stop(name: str, signum: int = 15, timeout: float = 10.0) -> bool:
    """Stop ``name``: ``signum`` to its init, SIGKILL after ``timeout`` s; False when it was not running."""
    import select
    import signal

    state, lockfile, _ = _paths(name)
    lock = _lock(lockfile, name)
    try:
        doc, target = _live(name)
        if doc is None or target is None:
            return False
        try:
            pidfd = os.pidfd_open(target.pid)
        except ProcessLookupError:
            _cleanup(name, doc)
            return True
        try:
            if not join.alive(target):  # the pidfd now pins the process we checked
                _cleanup(name, doc)
                return True
            for sig, wait in ((signum, timeout), (signal.SIGKILL, 10.0)):
                signal.pidfd_send_signal(pidfd, sig)
                if select.select([pidfd], [], [], max(wait, 0))[0]:
                    break
            else:
                raise RuntimeSetupError(f"instance {name} (pid {target.pid}) did not exit after SIGKILL")
        finally:
            os.close(pidfd)
        _cleanup(name, doc)
        _unlink_quiet(lockfile)
        return True
    finally:
        os.close(lock)
