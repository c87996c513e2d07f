"""``yurt srun``: run each task of a Slurm job step in a container (see :mod:`yurt.hpc.srun`)."""

from __future__ import annotations

import os
import sys

from yurt.errors import UsageError

FLAGS: list = []  # parsed by yurt.hpc.srun: its options mix with srun's
USAGE = """\
Usage: yurt srun --image IMG [--mounts SRC:DST[:ro],...] [--prestage] [yurt exec options] [srun options] \
-- COMMAND [ARGS...]

Run COMMAND in IMG for every task of a Slurm job step: srun [srun options] yurt exec [...] IMG COMMAND.

  --image IMG          the image (.sif, directory, docker://...)
  --mounts LIST        binds, Pyxis/--bind syntax: SRC[:DST[:ro|rw]],...
  --prestage           inside an allocation: unpack IMG once per node into the node-local cache
                       (srun --ntasks-per-node=1 yurt exec --unsquash IMG /bin/true), then run the
                       tasks with --unsquash
  --yurt CMD           how compute nodes start yurt (default: this Python with -m yurt)
  --exec-NAME[=V]      pass --NAME[=V] to yurt exec (needed for --exec-mpi=host: --mpi is srun's)
  --sharens, --bind, --contain, --env, ...  any other long yurt exec option goes to yurt exec
  everything else (-n 4, -N 2, --mpi=pmix, --ntasks-per-node=...) goes to srun
"""


def main(command: str, argv: list[str], ctx) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    if not argv:
        raise UsageError("srun needs an image and a command", "yurt srun --image IMG [options] -- COMMAND [ARGS...]")
    from yurt.cli.actions import FLAGS as EXEC_FLAGS
    from yurt.hpc import srun

    req = srun.parse(argv, EXEC_FLAGS)
    _check_exec_options(req, EXEC_FLAGS)
    yurt = req.yurt or [sys.executable, "-m", "yurt"]
    if ctx.debug:
        yurt = [*yurt, "--debug"]
    if req.prestage:
        if not os.environ.get("SLURM_JOB_ID"):
            raise UsageError("--prestage needs a job allocation", "use it inside sbatch or salloc")
        import subprocess

        stage = srun.prestage_command(req, yurt)
        if ctx.debug:
            sys.stderr.write(f"yurt: debug: srun: {stage}\n")
        status = subprocess.run(stage, stdin=subprocess.DEVNULL).returncode
        if status != 0:
            raise UsageError(f"pre-staging {req.image} failed (srun exited {status})")
    cmd = srun.main_command(req, yurt)
    if ctx.debug:
        sys.stderr.write(f"yurt: debug: srun: {cmd}\n")
    try:
        os.execvp(cmd[0], cmd)
    except FileNotFoundError:
        raise UsageError("srun not found", "run yurt srun where Slurm's client commands are on PATH")


def _check_exec_options(req, exec_flags: list) -> None:
    """What ``yurt exec`` would reject on every node (a bad number, a malformed bind) is rejected
    here, before a job step is started for nothing."""
    from yurt.cli.options import parse
    from yurt.runtime.plan import parse_binds

    values, _ = parse([*req.exec_args, "--"], exec_flags, stop_at_positional=True, environ={})
    parse_binds([*values["bind"], *([",".join(req.mounts)] if req.mounts else [])])
