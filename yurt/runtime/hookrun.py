"""Running OCI hooks: the supervising parent on the host and the container's own stages.

See :mod:`yurt.runtime.hooks` for which stage runs where.  Everything here is
loaded before any namespace exists (only for a container with hooks): the
container's part runs after ``pivot_root``, where nothing may be imported.
"""

from __future__ import annotations

import os
import signal
import time

from yurt import syscalls as sc
from yurt.errors import RuntimeSetupError, one_line
from yurt.spec import HOOK_STAGES, ContainerSpec, Hook

STATUS = {"prestart": "creating", "createRuntime": "creating", "createContainer": "creating",
          "startContainer": "created", "poststart": "running", "poststop": "stopped"}


def run_hook(hook: Hook, state: bytes, mask: set[int] | None = None) -> str | None:
    """Run one hook with ``state`` on stdin; ``None`` when it succeeded, else why not.

    Only ``os`` calls and modules loaded long before: this also runs after
    ``pivot_root``.  stdin is a memfd, so a hook that never reads it cannot
    block us; its stdout goes to our stderr, keeping the payload's stdout clean.
    """
    stdin = os.memfd_create("yurt-hook-state", os.MFD_CLOEXEC)
    try:
        os.write(stdin, state)
        os.lseek(stdin, 0, os.SEEK_SET)
        pid = os.fork()
        if pid == 0:
            try:
                os.dup2(stdin, 0)
                os.dup2(2, 1)
                sc.default_signal_action(signal.SIGPIPE)
                if mask is not None:
                    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                os.execve(hook.path, hook.args or [hook.path], dict(e.split("=", 1) for e in hook.env if "=" in e))
            except OSError as e:
                os.write(2, f"yurt: error: {one_line(f'cannot run hook {hook.path}: {e.strerror}')}\n".encode())
            finally:
                os._exit(127)
    finally:
        os.close(stdin)
    if hook.timeout:
        deadline, nap = time.monotonic() + hook.timeout, 0.001
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() >= deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return f"hook {hook.path} timed out after {hook.timeout} s"
            time.sleep(nap)
            nap = min(nap * 2, 0.05)
    else:
        _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return None
    return f"hook {hook.path} " + (f"was killed by signal {-code}" if code < 0 else f"failed with exit status {code}")


class HookRunner:
    """The hooks of one container, prepared before any namespace exists (see the module docstring)."""

    def __init__(self, spec: ContainerSpec) -> None:
        import json

        self.spec = spec
        self.hooks = {s: list(spec.hooks.get(s) or []) for s in HOOK_STAGES}
        self.json = json
        self.id = f"yurt-{os.getpid()}"
        self.bundle = ""
        self.pid = os.getpid()
        self.up = self.down = -1  # container -> runtime, runtime -> container
        self.debug = spec.extras.debug

    def state(self, stage: str) -> bytes:
        return self.json.dumps({"ociVersion": "1.0.2", "id": self.id, "status": STATUS[stage], "pid": self.pid,
                                "bundle": self.bundle, "annotations": self.spec.annotations}).encode()

    def run_stage(self, stage: str, mask: set[int] | None = None) -> str | None:
        """Run every hook of ``stage`` in order; stop at the first failure and say why."""
        for hook in self.hooks[stage]:
            if self.debug:
                os.write(2, f"yurt: debug: {stage} hook {hook.path}\n".encode())
            err = run_hook(hook, self.state(stage), mask)
            if err:
                return f"{stage} {err}"
        return None

    # -- the runtime side (parent, host namespaces) ------------------------
    def fork_runtime(self, rootfs) -> None:
        """Fork; the child returns and becomes the container, the parent supervises it and never returns."""
        from yurt.runtime import supervisor
        from yurt.runtime.mounts import session_base

        self.bundle = self._write_bundle(os.path.join(session_base(), "final"))
        old_mask = supervisor.block_signals()
        up_r, up_w = os.pipe()
        down_r, down_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            supervisor.restore_mask(old_mask)
            os.close(up_r)
            os.close(down_w)
            self.up, self.down = up_w, down_r
            return
        os.close(up_w)
        os.close(down_r)
        rootfs.abandon()  # our copies of anything prepared on the host; the container keeps its own
        code = 255
        try:
            code = self._supervise(pid, up_r, down_w, old_mask, supervisor)
        except BaseException as e:  # noqa: BLE001 - the supervisor must exit, never return into the CLI
            os.write(2, f"yurt: error: {one_line(f'hook supervisor failed: {e}')}\n".encode())
        finally:
            self._remove_bundle()
        os._exit(code)

    def _supervise(self, child: int, up: int, down: int, mask: set[int], supervisor) -> int:
        self.pid = child
        created = started = failed = False
        for word, arg in _messages(up):
            if word == "pre":
                created = True
                self.pid = int(arg) if arg.isdigit() else child
                err = self.run_stage("prestart", mask) or self.run_stage("createRuntime", mask)
                if err:
                    failed = True
                    os.write(2, f"yurt: error: {one_line(err)}; the container was not started\n".encode())
                _write_all(down, b"no\n" if err else b"ok\n")
            elif word == "exec":
                started = True
            elif word == "fail":
                started = False
        os.close(down)
        if started:
            err = self.run_stage("poststart", mask)
            if err:
                os.write(2, f"yurt: warning: {err}\n".encode())
        status = supervisor.supervise(child)
        if created:
            for hook in self.hooks["poststop"]:  # every one runs, failures are only reported
                err = run_hook(hook, self.state("poststop"), mask)
                if err:
                    os.write(2, f"yurt: warning: poststop {err}\n".encode())
        return 255 if failed else status

    def _write_bundle(self, root_path: str) -> str:
        import tempfile

        base = os.environ.get("XDG_RUNTIME_DIR")
        if not (base and os.path.isdir(base) and os.access(base, os.W_OK)):
            base = None
        bundle = tempfile.mkdtemp(prefix="yurt-bundle-", dir=base)
        with open(os.path.join(bundle, "config.json"), "w", encoding="utf-8") as f:
            self.json.dump(self.spec.to_oci(root_path), f, indent=1)
        return bundle

    def _remove_bundle(self) -> None:
        if self.bundle:
            import shutil

            shutil.rmtree(self.bundle, ignore_errors=True)

    # -- the container side -------------------------------------------------
    def close_channel(self) -> None:
        """For processes of the container that must not keep the runtime waiting (supervisors, init)."""
        for fd in (self.up, self.down):
            if fd >= 0:
                os.close(fd)
        self.up = self.down = -1

    def before_pivot(self) -> None:
        """Mounts done, root not yet pivoted: let the runtime run its hooks, then run createContainer."""
        try:
            self.pid = int(os.readlink("/proc/self"))  # the host's /proc still: the pid as the host sees it
        except (OSError, ValueError):
            self.pid = os.getpid()
        if self.up >= 0:
            _write_all(self.up, f"pre {self.pid}\n".encode())
            if os.read(self.down, 16) != b"ok\n":
                os._exit(255)  # the runtime side said why
        err = self.run_stage("createContainer")
        if err:
            raise RuntimeSetupError(err, "the container was not started")

    def start_container(self) -> None:
        """After ``pivot_root``, right before the payload's ``execve``."""
        err = self.run_stage("startContainer")
        if err:
            raise RuntimeSetupError(err, "the container was not started")
        if self.up >= 0:
            _write_all(self.up, b"exec\n")

    def exec_failed(self) -> None:
        if self.up >= 0:
            _write_all(self.up, b"fail\n")


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _messages(fd: int):
    """Lines ``WORD [ARG]`` from the container until it closes its end (its ``execve`` or exit)."""
    buf = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except InterruptedError:
            continue
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            word, _, arg = line.decode(errors="replace").partition(" ")
            yield word, arg
    os.close(fd)
