"""ContainerSpec + Rootfs -> a running payload.  The only code that creates namespaces.

The common case is a single process: create the namespaces, build the root,
``execve`` the payload.  stdin/stdout/stderr, signals and the exit status are
then the payload's own, and nothing of yurt stays in memory.  Only a PID
namespace needs processes to stay behind (see :mod:`yurt.runtime.supervisor`).
"""

from __future__ import annotations

import os
import sys

from yurt import syscalls as sc
from yurt.errors import PayloadNotExecutable, PayloadNotFound, RuntimeSetupError, YurtError, one_line, tell_api
from yurt.image.rootfs import Rootfs, notice
from yurt.runtime import idmap
from yurt.runtime.environment import env_script_wrapper, sh_quote
from yurt.runtime.mounts import MountExecutor
from yurt.spec import NS_IPC, NS_MOUNT, NS_NET, NS_PID, NS_USER, NS_UTS, ContainerSpec

TYPE_CHECKING = False  # typing costs milliseconds on the exec path
if TYPE_CHECKING:
    from typing import NoReturn

_NS_FLAGS = {
    NS_USER: sc.CLONE_NEWUSER,
    NS_MOUNT: sc.CLONE_NEWNS,
    NS_PID: sc.CLONE_NEWPID,
    NS_IPC: sc.CLONE_NEWIPC,
    NS_UTS: sc.CLONE_NEWUTS,
    NS_NET: sc.CLONE_NEWNET,
}
RUNSCRIPT = "/.singularity.d/runscript"
TESTSCRIPT = "/.singularity.d/test"
SCIF_APPS = "/scif/apps/"


def launch(spec: ContainerSpec, rootfs: Rootfs) -> NoReturn:
    """Run the container; never returns (exits with the payload's status).

    Everything the code after ``pivot_root`` needs is computed first: from
    then on the host's Python library is out of reach, so not a single module
    may be imported (and none could be planted by the image).
    """
    plan = _ExecPlan(spec)
    if plan.hooks is not None:
        plan.hooks.fork_runtime(rootfs)  # OCI hooks: a parent stays on the host (yurt.runtime.hooks)
    if spec.resources is not None:
        from yurt.runtime import cgroups

        # A supervisor stays outside; we go on inside the container's cgroup.  The supervisor must not keep
        # the hooks' channel open: its end tells the runtime side when the payload has started.
        cgroups.enter(spec, rootfs, plan.hooks.close_channel if plan.hooks is not None else None)
    create_namespaces(spec, rootfs)
    if spec.has(NS_PID):
        _run_with_pid_namespace(spec, rootfs, plan)
    MountExecutor(spec, rootfs, plan.before_pivot).run()
    exec_payload(spec, plan, None)


def create_namespaces(spec: ContainerSpec, rootfs: Rootfs) -> None:
    """The user namespace (and its id maps), then the others the spec asks for.

    A PID namespace applies to the children made afterwards.  Also used by the long-lived
    holders of shared containers (:mod:`yurt.runtime.join`).
    """
    idhelper = None
    if spec.has(NS_USER) and spec.extras.fakeroot_multi:
        idhelper = idmap.NewIdMapHelper(spec.uid_mappings, spec.gid_mappings)
    if spec.has(NS_USER):
        _unshare(sc.CLONE_NEWUSER, spec, rootfs, idhelper)
        if idhelper is None:
            idmap.write_own_maps(spec.uid_mappings, spec.gid_mappings)
        elif not idhelper.finish():
            notice("newuidmap/newgidmap failed; using a single-id fakeroot map")
            idmap.write_own_maps(spec.uid_mappings[:1], spec.gid_mappings[:1])
    rootfs.prepare_in_userns()
    flags = 0
    for ns in spec.namespaces:
        if ns != NS_USER:
            flags |= _NS_FLAGS.get(ns, 0)
    _unshare(flags, spec, rootfs, None)
    if spec.has(NS_NET):
        _loopback_up()


def _unshare(flags: int, spec: ContainerSpec, rootfs: Rootfs, idhelper: idmap.NewIdMapHelper | None) -> None:
    try:
        sc.unshare(flags)
    except OSError as e:
        rootfs.abandon()
        if idhelper:
            idhelper.cancel()
        raise RuntimeSetupError(f"cannot create namespaces: {e.strerror}", _userns_hint(spec))


class _ExecPlan:
    """What ``exec_payload`` needs, prepared while the host's modules are still reachable."""

    def __init__(self, spec: ContainerSpec) -> None:
        self.fallback: list[str] | None = None
        raw = spec.annotations.get("yurt.run.fallback")
        if raw:
            import json

            self.fallback = json.loads(raw)
        self.env_wrapper = env_script_wrapper(spec.extras.inject_env, spec.extras.app)
        if spec.extras.env_script_text:
            self.env_wrapper = spec.extras.env_script_text + "\n" + self.env_wrapper
        if spec.extras.fake_ownership:
            from yurt.runtime import seccomp

            if not seccomp.supported():
                raise RuntimeSetupError(f"--fake-ownership is not supported on {os.uname().machine}")
        if spec.extras.debug:
            import traceback  # noqa: F401 - loaded now for error reports after the pivot
        # Made by the planner (e.g. --mpi=host: the image's MPI ABI against the host's, yurt.hpc.mpi).
        self.container_checks = list(spec.extras.container_checks)
        self.hooks = None
        self.before_pivot = None
        if spec.hooks:
            from yurt.runtime.hookrun import HookRunner

            self.hooks = HookRunner(spec)
            self.before_pivot = self.hooks.before_pivot


def _run_with_pid_namespace(spec: ContainerSpec, rootfs: Rootfs, plan: _ExecPlan) -> NoReturn:
    from yurt.runtime import supervisor

    old_mask = supervisor.block_signals()
    init = os.fork()
    if init:
        rootfs.abandon()  # our copies of helper fds; the init child keeps its own
        if plan.hooks is not None:
            plan.hooks.close_channel()
        os._exit(supervisor.supervise(init))
    # PID 1 of the new namespace.
    try:
        sc.prctl(sc.PR_SET_PDEATHSIG, 9)  # the supervisor outside is killed: so are we
        MountExecutor(spec, rootfs, plan.before_pivot).run()
        if not spec.extras.init:
            exec_payload(spec, plan, old_mask)
        payload = os.fork()
        if payload == 0:
            exec_payload(spec, plan, old_mask)
        if plan.hooks is not None:
            plan.hooks.close_channel()  # the payload's execve tells the runtime side it started
        os._exit(supervisor.supervise(payload, reap_all=True))
    except YurtError as e:
        _die(e)
    except BaseException as e:  # noqa: BLE001 - PID 1 must never return into the caller's code
        _die(RuntimeSetupError(f"container init failed: {e}"), debug=spec.extras.debug)


def exec_payload(spec: ContainerSpec, plan: _ExecPlan, old_mask: set[int] | None) -> NoReturn:
    """Inside the new root: hostname, cwd, environment, then ``execve``."""
    try:
        proc = spec.process
        if spec.hostname and spec.has(NS_UTS):
            sc.sethostname(spec.hostname)
        _enter_cwd(proc.cwd, proc.fallback_cwd)
        for check in plan.container_checks:
            check()
        args = _final_args(spec, plan)
        if old_mask is not None:  # only set under a PID namespace, where supervisor is loaded
            from yurt.runtime import supervisor

            supervisor.restore_mask(old_mask)
        for signum in (13, 25):  # SIGPIPE, SIGXFSZ: Python ignores them, the payload must not
            sc.default_signal_action(signum)
        if plan.hooks is not None:
            plan.hooks.start_container()
        if spec.extras.run_as:  # a build step as the Dockerfile's USER: ids mapped by the build's namespace
            uid, gid, *groups = spec.extras.run_as
            os.setgroups(groups)
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
        if proc.no_new_privileges or spec.extras.fake_ownership:
            sc.set_no_new_privs()
        if spec.extras.fake_ownership:
            from yurt.runtime import seccomp  # loaded before the pivot by _ExecPlan

            seccomp.install_fake_ownership()
        _execvpe(args, proc.env, spec.extras.apptainer)
    except YurtError as e:
        if plan.hooks is not None:
            plan.hooks.exec_failed()
        _die(e)


def _final_args(spec: ContainerSpec, plan: _ExecPlan) -> list[str]:
    args = list(spec.process.args)
    if args and args[0] == TESTSCRIPT and not os.path.exists(TESTSCRIPT):
        raise YurtError("this image has no test", "build it with a %test section")
    if args and args[0].startswith(SCIF_APPS) and not os.path.exists(args[0]):
        raise YurtError(f"this image has no SCIF app {spec.extras.app!r} with a {os.path.basename(args[0])}",
                        "see 'yurt inspect --json IMAGE' for the apps it has")
    if args and args[0] == RUNSCRIPT and not os.path.exists(RUNSCRIPT):
        if not plan.fallback:
            raise YurtError("this image has no runscript", "use 'yurt exec IMAGE COMMAND' instead")
        args = list(plan.fallback)  # Entrypoint + (user args or Cmd)
    if spec.extras.env_scripts and (spec.extras.env_script_text or spec.extras.app
                                    or os.path.isdir("/.singularity.d/env")):
        if os.path.exists("/bin/sh"):
            args = ["/bin/sh", "-c", _with_payload_check(plan.env_wrapper, args[0], spec.extras.apptainer), "yurt",
                    *args]
        elif spec.extras.debug:
            os.write(2, b"yurt: debug: image has env scripts but no /bin/sh; not sourcing them\n")
    return args


def _with_payload_check(wrapper: str, name: str, apptainer: bool = False) -> str:
    """The env-script wrapper, made to say a missing command as yurt says it without a shell (one
    ``yurt: error:`` line, status 127; as Apptainer says it, status 255, under its names) rather than in
    the shell's words (``yurt: exec: line 8: ...``).  The name is shown escaped and quoted here, so that
    no character of it reaches the terminal raw."""
    shown = sh_quote(one_line(name))
    if apptainer:
        text, path, status = _apptainer_missing('"%s"', name), "", 255
    else:
        where, path = ("", "") if "/" in name else (" (PATH=%s)", ' "$PATH"')
        text, status = f"%s: command not found in the container{where}", 127
    check = (f'command -v "$1" >/dev/null 2>&1 || {{ printf \'yurt: error: {text}'
             f'\\n\' {shown}{path} >&2; exit {status}; }}\n')
    head, _, tail = wrapper.rpartition("\n")  # tail: exec "$@"
    return f"{head}\n{check}{tail}" if head else check + tail


def _execvpe(args: list[str], env: dict[str, str], apptainer: bool = False) -> NoReturn:
    """``execvpe``; a command that is missing or cannot run is PayloadNotFound (127) or PayloadNotExecutable
    (126), as a shell says, or under Apptainer's names status 255 and a missing one in Apptainer's words
    (``"x": executable file not found in $PATH``, which cwltool looks for)."""
    if not args or not args[0]:  # `yurt exec IMG ''`, an Entrypoint of [""]
        raise _status(PayloadNotFound("no command to run (the command is empty)"), apptainer)
    try:
        _search_and_exec(args[0], args, env)
    except FileNotFoundError:
        where = "" if "/" in args[0] else f" (PATH={env.get('PATH', '')})"
        text = (_apptainer_missing(f'"{args[0]}"', args[0]) if apptainer
                else f"{args[0]}: command not found in the container{where}")
        raise _status(PayloadNotFound(text), apptainer)
    except PermissionError:
        raise _status(PayloadNotExecutable(f"{args[0]}: permission denied in the container"), apptainer)
    except OSError as e:
        raise _status(PayloadNotExecutable(f"{args[0]}: cannot execute: {e.strerror}"), apptainer)


def _apptainer_missing(shown: str, name: str) -> str:
    return f"{shown}: no such file or directory" if "/" in name else f"{shown}: executable file not found in $PATH"


def _status(e: YurtError, apptainer: bool) -> YurtError:
    if apptainer:  # Apptainer's starter ends every failure to start the payload with FATAL, status 255
        e.exit_code = 255
    return e


def _search_and_exec(file: str, args: list[str], env: dict[str, str]) -> NoReturn:
    """``os.execvpe`` without its lazy ``import warnings`` (in ``os.get_exec_path``): this runs after
    ``pivot_root``, where the host's library is gone, so it may only use what is loaded already."""
    if "/" in file:
        os.execve(file, args, env)
    first_error: OSError | None = None
    last_error: OSError = FileNotFoundError(2, "No such file or directory", file)
    for directory in env.get("PATH", os.defpath).split(":"):
        try:
            os.execve(os.path.join(directory or ".", file), args, env)
        except (FileNotFoundError, NotADirectoryError) as e:
            last_error = e
        except OSError as e:  # e.g. EACCES: remembered, but a later directory may still have it
            last_error = e
            if first_error is None:
                first_error = e
    raise first_error or last_error


def _enter_cwd(cwd: str, fallback: str | None) -> None:
    try:
        os.chdir(cwd)
        return
    except OSError:
        pass
    for alt in (fallback, "/"):
        if alt:
            try:
                os.chdir(alt)
                notice(f"{cwd} does not exist in the container; starting in {alt}")
                return
            except OSError:
                continue


def _loopback_up() -> None:
    import fcntl
    import socket
    import struct

    siocsifflags, iff_up_loopback_running = 0x8914, 0x1 | 0x8 | 0x40
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH14x", b"lo", iff_up_loopback_running))


def _userns_hint(spec: ContainerSpec) -> str:
    if not spec.has(NS_USER):
        return "check that this kernel allows the requested namespaces"
    for path, bad in (("/proc/sys/kernel/unprivileged_userns_clone", "0"),
                      ("/proc/sys/user/max_user_namespaces", "0"),
                      ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1")):
        try:
            with open(path) as f:
                if f.read().strip() == bad:
                    return f"unprivileged user namespaces are disabled here ({path} = {bad}); ask your admin"
        except OSError:
            continue
    return "unprivileged user namespaces may be disabled or exhausted on this machine"


def _die(e: YurtError, debug: bool = False) -> NoReturn:
    if debug:
        import traceback

        traceback.print_exc()
    tell_api(e)
    sys.stderr.write(f"yurt: error: {one_line(str(e))}\n")
    sys.stderr.flush()
    os._exit(e.exit_code)
