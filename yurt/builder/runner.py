"""Who is root during a build, and running the build's steps as that root.

The build's root is one of:

* **real root**: no user namespace at all.
* **a subuid range** (``/etc/subuid`` and ``newuidmap``): a user namespace mapping 0 to
  the builder and 1..N to the range, so ``chown`` really works.  Files then belong to
  ids the builder cannot touch outside, so every host-side step that writes the tree
  (unpacking, ``%setup``, ``%files``, packing, removal) runs in a user namespace with
  the same map.
* **one id** (no range, or ``YURT_BUILD_IGNORE_SUBUID=1``): 0 inside is the builder;
  ``chown``/``mknod``/``set*id`` are faked by a seccomp filter, apt gets
  ``APT::Sandbox::User "root"``, and the image is packed with every file owned by root.

:func:`detect_mode` decides it once per build; a :class:`Runner` then runs the host-side
steps that write the tree (Python functions or commands) as that root, and
:func:`run_in_container` runs the steps that belong inside the container (``%post``,
``%test``, ``RUN``) through the same launcher as ``yurt exec``.  Both wait for their child
so that Ctrl-C and SIGTERM stop it and reap it before the build says it was interrupted
(:func:`_wait`).  Shared by the definition-file build (:mod:`yurt.builder.executor`) and
the Dockerfile build (:mod:`yurt.builder.dockerbuild`), which differ only in their steps.
"""

from __future__ import annotations

import os
import signal
import sys

from yurt.builder.sandboxfiles import remove_placeholders
from yurt.errors import BuildError, YurtError, one_line, warn
from yurt.runtime.paths import EscapeError, resolve_in_root

ROOT, SUBUID, SINGLE = "root", "subuid", "single"
APT_CONF = "/.yurt-apt.conf"
APT_SANDBOX = 'APT::Sandbox::User "root";\n'


def _say(message: str) -> None:
    if os.environ.get("YURT_QUIET") not in ("1", "true", "yes"):
        sys.stderr.write(f"yurt: build: {message}\n")
        sys.stderr.flush()


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes", "on")


# -- running host-side steps as the build's root ----------------------------------------------------


def _exit_text(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    return f"killed by signal {-code}" if code < 0 else f"exit status {code}"


def _wait(pid: int) -> int:
    """Wait for a child and return its wait status.

    On Ctrl-C (which the child, in the same process group, gets too) or SIGTERM (made a
    KeyboardInterrupt by :func:`in_workspace`) the child is stopped and waited for, then the
    KeyboardInterrupt goes on (:func:`_stop_and_reap`).
    """
    try:
        return os.waitpid(pid, 0)[1]
    except KeyboardInterrupt:
        _stop_and_reap(pid)
        raise


def _stop_and_reap(pid: int) -> None:
    """After an interrupt: SIGTERM the child ``pid`` if it still runs, and reap it.

    Python raises KeyboardInterrupt at the first bytecode after the signal arrived, which
    can be just *after* a ``waitpid`` reaped the child (the child got the same Ctrl-C and
    exited first) and before its status reached the caller.  A second blocking ``waitpid``
    then failed with ECHILD ("No child processes") instead of the build saying it was
    interrupted.  So look first, without blocking: ECHILD means the child is already gone;
    a child not yet reaped (running or a zombie) still holds its pid, so signalling it
    cannot hit another process.  A further Ctrl-C while waiting only waits again.
    """
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
            return
        except ChildProcessError:
            return
        except KeyboardInterrupt:
            continue


class Runner:
    """Runs Python functions and commands that write the image tree, as the build's root.

    In ``subuid`` mode they run in a forked child that entered a user namespace with the
    build's id map (made by ``newuidmap``/``newgidmap``); otherwise they run here.
    """

    def __init__(self, mode: str, uid_maps=None, gid_maps=None) -> None:
        self.mode = mode
        self.uid_maps = uid_maps or []
        self.gid_maps = gid_maps or []

    def call(self, func, *args, **kwargs):
        if self.mode != SUBUID:
            return func(*args, **kwargs)
        self._in_userns(func, args, kwargs)
        return None

    def _in_userns(self, func, args, kwargs) -> None:
        from yurt import syscalls as sc
        from yurt.runtime import idmap

        sys.stdout.flush()
        sys.stderr.flush()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(r)
                if self.mode == SINGLE:  # our own id as root: written by ourselves, no helper
                    from yurt.spec import IDMapping

                    uid, gid = os.getuid(), os.getgid()
                    try:
                        sc.unshare(sc.CLONE_NEWUSER)
                    except OSError as e:
                        raise BuildError(f"cannot create a user namespace: {e.strerror}")
                    idmap.write_own_maps([IDMapping(0, uid, 1)], [IDMapping(0, gid, 1)])
                else:
                    helper = idmap.NewIdMapHelper(self.uid_maps, self.gid_maps)
                    try:
                        sc.unshare(sc.CLONE_NEWUSER)
                    except OSError as e:
                        helper.cancel()
                        raise BuildError(f"cannot create a user namespace: {e.strerror}")
                    if not helper.finish():
                        raise BuildError("newuidmap/newgidmap failed to map the subuid range")
                func(*args, **kwargs)
                code = 0
            except YurtError as e:
                os.write(w, str(e).encode())
            except KeyboardInterrupt:
                code = 130
            except BaseException as e:  # noqa: BLE001 - reported to the parent, never raised into its code
                os.write(w, (f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.filename
                             else f"{type(e).__name__}: {e}").encode())
            finally:
                os._exit(code)
        os.close(w)
        try:
            chunks = []
            while chunk := os.read(r, 65536):
                chunks.append(chunk)
        except KeyboardInterrupt:
            _stop_and_reap(pid)
            raise
        finally:
            os.close(r)
        status = _wait(pid)
        if os.waitstatus_to_exitcode(status) == 130:
            raise KeyboardInterrupt
        if status != 0:
            message = b"".join(chunks).decode("utf-8", "replace").strip()
            raise BuildError(message or f"a build step in the user namespace failed ({_exit_text(status)})")

    def as_root(self, func, *args, **kwargs):
        """Like :meth:`call`, but with a single-id fakeroot too in a user namespace where the builder is
        root: reading the whole tree (build-cache scans and layers) must not stop at a file a step left
        mode 000.  As :meth:`call`, the result is returned only when ``func`` runs here."""
        if self.mode != SINGLE:
            return self.call(func, *args, **kwargs)
        self._in_userns(func, args, kwargs)
        return None

    def run(self, argv: list[str], *, what: str, env: dict | None = None, cwd: str | None = None) -> None:
        """Run a command (output streams through); BuildError naming ``what`` when it fails."""
        self.call(_run_checked, argv, what, env, cwd)

    def remove(self, path: str) -> None:
        from yurt.image.squashfs import remove_tree

        try:
            self.call(remove_tree, path)
        except BuildError as e:
            warn(f"could not remove {path}: {e}")


def _run_checked(argv: list[str], what: str, env: dict | None, cwd: str | None) -> None:
    import subprocess

    try:
        rc = subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL).returncode
    except OSError as e:
        raise BuildError(f"{what}: cannot run {argv[0]}: {e.strerror}")
    if rc != 0:
        raise BuildError(f"{what} failed with " + (f"signal {-rc}" if rc < 0 else f"exit status {rc}"))


def detect_mode(*, conversion: bool = False) -> Runner:
    """The build's kind of root (see the module docstring), said once on stderr.

    ``conversion``: the build only unpacks an image into a sandbox (nothing runs in it, nothing
    is copied in), so a rootless builder gets the tree as its own, every file the builder's, as
    Apptainer's unprivileged unsquashfs gives it: no id map, which would turn an image's ids,
    the builder's own included, into ids of the subuid range the builder can neither change nor
    remove.
    """
    if os.geteuid() == 0:
        return Runner(ROOT)
    if conversion:
        _say("unpacking into a sandbox that belongs to you (nothing runs in it)")
        return Runner(SINGLE)
    from yurt.runtime import idmap
    from yurt.runtime.plan import _user_info

    uid, gid = os.getuid(), os.getgid()
    if not _truthy("YURT_BUILD_IGNORE_SUBUID"):
        uid_maps, gid_maps, multi = idmap.fakeroot_maps(uid, gid, _user_info(uid, gid)[0], use_subid=True)
        if multi:
            runner = Runner(SUBUID, uid_maps, gid_maps)
            try:
                runner.call(os.getuid)  # newuidmap works here?
            except BuildError as e:
                warn(f"cannot use the subuid range ({e}); using a single-id fakeroot")
            else:
                _say("fakeroot with a subuid range (newuidmap)")
                return runner
    _say("single-id fakeroot; chown/mknod are faked (seccomp)")
    return Runner(SINGLE)

def single_id_extras(runner: Runner, ctl: str) -> tuple[list[str], list[str]]:
    """Binds and environment that a build step needs under a single-id fakeroot: apt must not drop to ``_apt``."""
    if runner.mode != SINGLE:
        return [], []
    apt = os.path.join(ctl, "apt.conf")
    if not os.path.exists(apt):
        with open(apt, "w", encoding="utf-8") as f:
            f.write(APT_SANDBOX)
    return [f"{apt}:{APT_CONF}:ro"], [f"APT_CONFIG={APT_CONF}"]


def run_in_container(runner: Runner, sandbox: str, args: list[str], *, writable: bool, fakeroot: bool,
                     binds: list[str], env: list[str], cwd: str = "/", run_as: list[int] | None = None) -> int:
    """Run ``args`` in the sandbox through the real launcher, in a forked child; its wait status.

    With ``writable``, the empty mount points the launcher had to create in the sandbox are
    removed afterwards.
    """
    from yurt.image.rootfs import DirectoryRootfs
    from yurt.image.source import Image
    from yurt.runtime.plan import ActionRequest, plan_container

    # site=False: as Apptainer, build steps ignore the site's binds and image rules.
    req = ActionRequest(action="exec", image=Image(path=sandbox, kind="sandbox"), args=args, writable=writable,
                        fakeroot=fakeroot and runner.mode != ROOT, ignore_subuid=runner.mode == SINGLE,
                        fake_ownership=fakeroot and runner.mode == SINGLE, cleanenv=True, no_home=True, pwd=cwd,
                        binds=binds, env=env, site=False, run_as=run_as, image_tmp=writable)
    spec = plan_container(req)
    created = []
    if writable:
        for m in spec.mounts:
            try:
                if resolve_in_root(sandbox, m.destination)[1]:
                    created.append(m.destination)
            except EscapeError:
                continue
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 255
        try:
            from yurt.runtime.launcher import launch

            launch(spec, DirectoryRootfs(sandbox))
        except YurtError as e:
            os.write(2, f"yurt: error: {one_line(str(e))}\n".encode())
            code = e.exit_code
        except KeyboardInterrupt:  # Ctrl-C while the container starts: the build says "interrupted"
            code = 130
        except BaseException as e:  # noqa: BLE001 - the child must never return into the build
            os.write(2, f"yurt: error: {one_line(f'cannot start the build container: {e}')}\n".encode())
        finally:
            os._exit(code)
    try:
        status = _wait(pid)
    finally:
        if created:
            runner.call(remove_placeholders, sandbox, created)
    return status
