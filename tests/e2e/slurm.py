"""A throw-away single-node Slurm on localhost, started without systemd (root only).

Used by the ``slurm`` fixture in ``tests/e2e/conftest.py`` and usable on its own::

    with LocalSlurm() as slurm:                      # munged, slurmctld, slurmd; node idle
        slurm.run_as("yurttest", ["srun", "-n", "2", "hostname"])

Everything lives in one temporary directory under ``/var/tmp`` (mode 0755, so the
unprivileged test user can read ``slurm.conf`` and reach the munge socket): a fresh
munge key and ``munged`` on a private socket, a ``slurm.conf`` for ``NodeName=localhost``
with the machine's CPUs and memory (``slurmd -C``), free TCP ports, ``proctrack/linuxproc``,
``task/none``, no accounting, ``MpiDefault=pmix``, and state, spool, pid and log files in
that directory, except slurmd's spool, made under ``/var/spool`` where sites have it (the PMIx
server directory lives there, out of a container's default view).  Clients find the cluster
through ``SLURM_CONF`` (see :meth:`LocalSlurm.env`).

:meth:`LocalSlurm.stop` cancels the jobs, stops the daemons (SIGTERM, then SIGKILL), kills
any ``slurmstepd`` left behind, and removes the directory; it runs even when the start
failed half-way, and :meth:`start` raises with the daemons' log tails when the node does
not come up.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path


def stop_process(proc: subprocess.Popen | None, timeout: float = 10) -> None:
    """SIGTERM a daemon the tests started, SIGKILL it if it is still there after ``timeout`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)

DAEMONS = ("munged", "slurmctld", "slurmd")
PROGRAMS = ("munged", "slurmctld", "slurmd", "srun", "sbatch", "sinfo", "squeue", "scancel")


def missing_programs() -> list[str]:
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [p for p in PROGRAMS if shutil.which(p, path=path) is None]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hardware() -> str:
    """``CPUs=... Boards=... RealMemory=...`` as ``slurmd -C`` reports this machine (NodeName dropped)."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30, check=True).stdout
    first = out.splitlines()[0].split()
    return " ".join(w for w in first if not w.startswith("NodeName="))


class SlurmError(RuntimeError):
    pass


class LocalSlurm:
    """One munged + slurmctld + slurmd, owned by this object."""

    def __init__(self, base: Path | None = None, partition: str = "debug", mpi_default: str = "pmix",
                 spool_parent: str | None = "/var/spool") -> None:
        self.base = Path(base) if base else Path(tempfile.mkdtemp(prefix="yurt-slurm-", dir="/var/tmp"))
        self.base.chmod(0o755)
        # slurmd's spool (and the PMIx server directory in it) where a real site has it, outside the
        # paths a container sees by default, so the tests see whether yurt binds what PMIx needs.
        if spool_parent and os.path.isdir(spool_parent):
            self.spool = Path(tempfile.mkdtemp(prefix="yurt-test-slurmd-", dir=spool_parent))
        else:
            self.spool = self.base / "spool"
            self.spool.mkdir()
        self.spool.chmod(0o755)
        self.partition = partition
        self.mpi_default = mpi_default
        self.conf = self.base / "slurm.conf"
        self.munge_socket = self.base / "munge" / "munge.socket.2"
        self.procs: dict[str, subprocess.Popen] = {}

    # -- life cycle ----------------------------------------------------------------
    def __enter__(self) -> LocalSlurm:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment a Slurm client needs: ``SLURM_CONF`` and a sane ``PATH``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = env.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin"
        env.update(extra or {})
        return env

    def start(self, timeout: float = 90) -> None:
        self._start_munge()
        self._write_conf()
        env = self.env()
        logs = {name: open(self.base / f"{name}.out", "wb") for name in ("slurmctld", "slurmd")}
        try:
            self.procs["slurmctld"] = subprocess.Popen(
                ["slurmctld", "-D", "-i", "-f", str(self.conf)], env=env, stdin=subprocess.DEVNULL,
                stdout=logs["slurmctld"], stderr=subprocess.STDOUT, start_new_session=True)
            self.procs["slurmd"] = subprocess.Popen(
                ["slurmd", "-D", "-N", "localhost", "-f", str(self.conf)], env=env, stdin=subprocess.DEVNULL,
                stdout=logs["slurmd"], stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            for f in logs.values():
                f.close()
        self._wait_idle(timeout)

    def _start_munge(self) -> None:
        mdir = self.base / "munge"
        mdir.mkdir(mode=0o755)
        key = mdir / "munge.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(1024))
        (mdir / "seed").touch(0o600)
        self.procs["munged"] = subprocess.Popen(
            ["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={self.munge_socket}",
             f"--pid-file={mdir / 'munged.pid'}", f"--log-file={mdir / 'munged.log'}",
             f"--seed-file={mdir / 'seed'}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(mdir / "munged.out", "wb"),
            start_new_session=True)
        deadline = time.monotonic() + 20
        while not self.munge_socket.exists():
            if self.procs["munged"].poll() is not None or time.monotonic() > deadline:
                raise SlurmError("munged did not start: " + self._tail(mdir / "munged.out", mdir / "munged.log"))
            time.sleep(0.05)

    def _write_conf(self) -> None:
        (self.base / "state").mkdir(mode=0o755)
        (self.base / "plugstack.conf").write_text("")  # no site SPANK plugins
        b = self.base
        self.conf.write_text(f"""\
# written by tests/e2e/slurm.py
ClusterName=yurttest
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
StateSaveLocation={b}/state
SlurmdSpoolDir={self.spool}
SlurmctldPidFile={b}/slurmctld.pid
SlurmdPidFile={b}/slurmd.pid
SlurmctldLogFile={b}/slurmctld.log
SlurmdLogFile={b}/slurmd.log
PlugStackConfig={b}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault={self.mpi_default}
ReturnToService=2
InactiveLimit=0
KillWait=5
SlurmdTimeout=60
NodeName=localhost NodeHostname=localhost NodeAddr=127.0.0.1 {_hardware()} State=UNKNOWN
PartitionName={self.partition} Nodes=localhost Default=YES MaxTime=INFINITE OverSubscribe=YES State=UP
""")
        self.conf.chmod(0o644)

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            for name in ("slurmctld", "slurmd"):
                if self.procs[name].poll() is not None:
                    raise SlurmError(f"{name} exited ({self.procs[name].returncode}): " + self._logs())
            r = subprocess.run(["sinfo", "-h", "-n", "localhost", "-o", "%T"], env=self.env(), capture_output=True,
                               text=True, timeout=30)
            state = r.stdout.strip()
            if r.returncode == 0 and state == "idle":
                return
            time.sleep(0.3)
        raise SlurmError(f"the node is not idle after {timeout:.0f} s (state {state!r}): " + self._logs())

    def stop(self) -> None:
        """Cancel jobs, stop the daemons, kill stray step daemons, remove the directory.  Never raises."""
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--full", "--state=RUNNING,PENDING,SUSPENDED", "--quiet", "-p",
                            self.partition], env=self.env(), capture_output=True, timeout=30, check=False)
        stepds = self._stepds()
        for name in ("slurmd", "slurmctld", "munged"):
            stop_process(self.procs.get(name), timeout=15)
        for pid in stepds | self._stepds():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.procs.clear()
        shutil.rmtree(self.spool, ignore_errors=True)
        shutil.rmtree(self.base, ignore_errors=True)

    def _stepds(self) -> set[int]:
        """``slurmstepd`` processes of this cluster: they hold files open in our directory."""
        found: set[int] = set()
        bases = (str(self.base) + "/", str(self.spool) + "/")
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() != "slurmstepd":
                        continue
                fds = os.listdir(f"/proc/{entry}/fd")
                if any(os.readlink(f"/proc/{entry}/fd/{fd}").startswith(bases) for fd in fds):
                    found.add(int(entry))
            except OSError:
                continue
        return found

    # -- clients -----------------------------------------------------------------------
    def run_as(self, user: str, argv: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 120,
               cwd: str | os.PathLike[str] = "/tmp", home: str | None = None) -> subprocess.CompletedProcess:
        """Run ``argv`` (``srun``, ``sbatch``...) as ``user`` with this cluster's client environment.

        ``timeout`` bounds the whole command: a hung MPI job fails the test instead of blocking
        CI (the job is then cancelled by :meth:`cancel_all`)."""
        import pwd

        pw = pwd.getpwnam(user)
        full = self.env({"HOME": home or pw.pw_dir, "USER": user, "LOGNAME": user, **(env or {})})
        pairs = [f"{k}={v}" for k, v in full.items()]
        cmd = ["runuser", "-u", user, "--", "env", "-i", *pairs, *argv]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            self.cancel_all()
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            raise AssertionError(f"{' '.join(argv)} did not finish in {timeout:.0f} s (hung?); output so far:\n"
                                 f"{out[-3000:]}") from None

    def cancel_all(self) -> None:
        subprocess.run(["scancel", "--full", "--quiet", "-p", self.partition], env=self.env(), capture_output=True,
                       timeout=30, check=False)

    def wait_job(self, job_id: str, timeout: float = 120) -> str:
        """Wait until the job has left the queue; return its last state seen by ``squeue``/``scontrol``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=self.env(), capture_output=True,
                               text=True, timeout=30)
            fields = dict(w.split("=", 1) for w in r.stdout.split() if "=" in w)
            state = fields.get("JobState", "")
            if r.returncode != 0 or state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                                               "OUT_OF_MEMORY"):
                return state or "GONE"
            time.sleep(0.3)
        self.cancel_all()
        raise AssertionError(f"job {job_id} still running after {timeout:.0f} s (hung?)")

    # -- diagnostics -------------------------------------------------------------------
    @staticmethod
    def _tail(*paths: Path, lines: int = 15) -> str:
        out = []
        for p in paths:
            try:
                text = p.read_text(errors="replace").strip().splitlines()[-lines:]
            except OSError:
                continue
            out.append(f"--- {p.name}\n" + "\n".join(text))
        return "\n".join(out) or "(no log)"

    def _logs(self) -> str:
        b = self.base
        return self._tail(b / "slurmctld.out", b / "slurmctld.log", b / "slurmd.out", b / "slurmd.log")
