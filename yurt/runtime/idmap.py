"""User-namespace id maps: true identity, single-id fakeroot, subuid fakeroot.

* True identity (the default): the user is the same UID/GID inside as
  outside; supplementary groups are kept by the kernel (they still grant
  access) but show as the overflow id inside, because an unprivileged process
  may only map its own ids.
* ``--fakeroot`` with no ``/etc/subuid`` range: 0 inside is the user outside.
* ``--fakeroot`` with a range: 0 is the user, 1..N the range, written by the
  setuid ``newuidmap``/``newgidmap`` tools from a helper forked *before* the
  namespace exists (they must run in the parent namespace).
"""

from __future__ import annotations

import os

from yurt.errors import RuntimeSetupError
from yurt.programs import find, helper_env
from yurt.spec import IDMapping


def true_identity(uid: int, gid: int) -> tuple[list[IDMapping], list[IDMapping]]:
    return [IDMapping(uid, uid, 1)], [IDMapping(gid, gid, 1)]


def subid_range(path: str, user: str, uid: int) -> tuple[int, int] | None:
    """First ``start:count`` range of ``user`` (or its uid) in an ``/etc/sub[ug]id`` file."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) != 3 or parts[0] not in (user, str(uid)):
                    continue
                try:
                    start, count = int(parts[1]), int(parts[2])
                except ValueError:
                    continue
                if count > 0:
                    return start, count
    except OSError:
        return None
    return None


def fakeroot_maps(uid: int, gid: int, user: str, use_subid: bool = True) -> tuple[list[IDMapping],
                                                                                 list[IDMapping], bool]:
    """Maps for ``--fakeroot``; the bool says whether newuidmap/newgidmap are needed."""
    sub_u = subid_range("/etc/subuid", user, uid) if use_subid else None
    sub_g = subid_range("/etc/subgid", user, uid) if use_subid else None
    if sub_u and sub_g and find("newuidmap") and find("newgidmap"):
        return (
            [IDMapping(0, uid, 1), IDMapping(1, sub_u[0], sub_u[1])],
            [IDMapping(0, gid, 1), IDMapping(1, sub_g[0], sub_g[1])],
            True,
        )
    return [IDMapping(0, uid, 1)], [IDMapping(0, gid, 1)], False


def write_control_file(path: str, text: str) -> None:
    """One write(2) to a kernel control file (/proc id maps, cgroupfs): the value must arrive whole."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _format(maps: list[IDMapping]) -> str:
    return "".join(f"{m.container_id} {m.host_id} {m.size}\n" for m in maps)


def write_own_maps(uids: list[IDMapping], gids: list[IDMapping]) -> None:
    """Write single-id maps for ourselves, as an unprivileged process may."""
    try:
        write_control_file("/proc/self/setgroups", "deny")
        write_control_file("/proc/self/uid_map", _format(uids))
        write_control_file("/proc/self/gid_map", _format(gids))
    except OSError as e:
        raise RuntimeSetupError(f"cannot write user namespace id maps: {e.strerror}")


class NewIdMapHelper:
    """A child forked before ``unshare`` that runs newuidmap/newgidmap for us.

    It waits on a pipe until the parent has created its user namespace, then
    maps the parent's pid.  ``finish`` reports whether it worked so the caller
    can fall back to a single-id map with a notice.
    """

    def __init__(self, uids: list[IDMapping], gids: list[IDMapping]) -> None:
        self.parent = os.getpid()
        # Found (site helper directories under a policy) before the fork: the child only runs them.
        self.tools = {tool: find(tool) for tool in ("newuidmap", "newgidmap")}
        self.env = helper_env() or dict(os.environ)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # helper
            os.close(w)
            try:
                if os.read(r, 1) != b"g":
                    os._exit(2)
                ok = self._run("newuidmap", uids) and self._run("newgidmap", gids)
                os._exit(0 if ok else 1)
            except BaseException:
                os._exit(3)
        os.close(r)
        self.pid, self.go = pid, w

    def _run(self, tool: str, maps: list[IDMapping]) -> bool:
        path = self.tools[tool]
        if path is None:
            return False
        args = [tool, str(self.parent)]
        for m in maps:
            args += [str(m.container_id), str(m.host_id), str(m.size)]
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        pid = os.posix_spawn(path, args, self.env)
        return os.waitpid(pid, 0)[1] == 0

    def finish(self) -> bool:
        os.write(self.go, b"g")
        os.close(self.go)
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status) == 0

    def cancel(self) -> None:
        os.close(self.go)
        os.waitpid(self.pid, 0)
