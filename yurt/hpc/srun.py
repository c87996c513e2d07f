"""``yurt srun``: Pyxis-style container options on ``srun``, without a SPANK plug-in.

``yurt srun --image IMG [--mounts SRC:DST[:ro],...] [yurt exec options] [srun options] -- APP ARGS``
becomes ``srun [srun options] YURT exec [yurt exec options] IMG APP ARGS``: every task of the step is
one container.  Options are sorted by name, since both programs have short options of their own:

* ``--image``, ``--mounts`` (Pyxis' spelling of ``--bind``), ``--prestage``, ``--no-sharens`` and
  ``--yurt`` are ``yurt srun``'s;
* every *long* ``yurt exec`` option (``--bind``, ``--contain``, ``--sharens``, ``--env``...) goes to
  ``yurt exec``, except ``--mpi``, which is srun's PMI plug-in; yurt's MPI model is ``--exec-mpi=host``
  (any exec option can be spelled ``--exec-NAME`` to be explicit);
* everything else before ``--`` (``-n 4``, ``-N2``, ``--mpi=pmix``, ``--ntasks-per-node=8``) is srun's.

Per-node set-up once per job step, not once per rank, as Pyxis does: ``yurt srun`` adds ``--sharens``,
so the ranks of a step on a node share one container (one image mount, one user namespace, Open
MPI's CMA single copy working); ``--no-sharens`` gives every rank its own (resource limits, which
cannot be shared, imply it).  ``--prestage`` first runs
``srun --ntasks-per-node=1 YURT exec --unsquash IMG /bin/true`` in the allocation, which unpacks the
image once into each node's local cache (``$YURT_LOCAL_CACHEDIR``), and then starts the ranks with
``--unsquash``, so they all reuse that tree.  A site prolog can do the same before the job starts
(see the README).  This module only builds command lines; :mod:`yurt.cli.srun` runs them.
"""

from __future__ import annotations

from yurt.errors import UsageError
from yurt.record import Record

OWN_VALUE = ("image", "mounts", "yurt")
OWN_BOOL = ("prestage", "no-sharens")
# yurt exec options that give each rank its own container (limits cannot apply to a shared one).
UNSHARED = ("--memory", "--cpus", "--pids-limit", "--cpuset", "--cpuset-cpus", "--sharens")
# Long names yurt exec has too: srun's meaning wins unless spelled --exec-NAME.
SRUN_OWNED = ("mpi", "help", "network")
# srun options that choose where a step runs; the pre-staging step gets the same ones.
PLACEMENT = ("-N", "--nodes", "-w", "--nodelist", "-x", "--exclude", "-p", "--partition", "-A", "--account",
             "-q", "--qos", "--reservation", "-t", "--time", "--jobid")


class SrunRequest(Record):
    __slots__ = ("image", "mounts", "prestage", "yurt", "exec_args", "srun_args", "command", "sharens")
    _defaults = {"mounts": list, "prestage": False, "yurt": None, "exec_args": list, "srun_args": list,
                 "command": list, "sharens": True}
    image: str
    mounts: list[str]
    prestage: bool
    yurt: list[str] | None  # how compute nodes start yurt (default: this interpreter, -m yurt)
    exec_args: list[str]
    srun_args: list[str]
    command: list[str]
    sharens: bool  # one container per node for the step's ranks (off: --no-sharens)


def parse(argv: list[str], exec_flags: list) -> SrunRequest:
    """Split ``yurt srun`` arguments (see the module docstring)."""
    by_name = {f.name: f for f in exec_flags}
    for f in exec_flags:
        for a in f.aliases:
            by_name[a] = f
    image = None
    mounts: list[str] = []
    prestage = False
    sharens = True
    yurt = None
    exec_args: list[str] = []
    srun_args: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            break
        if not arg.startswith("--") or len(arg) == 2:
            srun_args.append(arg)
            continue
        name, eq, value = arg[2:].partition("=")
        explicit = name.startswith("exec-") and name[5:] in by_name
        if name in OWN_VALUE:
            if not eq:
                if i >= len(argv):
                    raise UsageError(f"--{name} needs a value")
                value, i = argv[i], i + 1
            if name == "image":
                image = value
            elif name == "mounts":
                if value.strip():  # checked with --bind's rules by the caller: no entry is dropped here
                    mounts.append(value)
            else:
                import shlex

                try:
                    yurt = shlex.split(value)
                except ValueError as e:
                    raise UsageError(f"--yurt {value!r}: {e}", "quote it as a shell would")
                if not yurt:
                    raise UsageError("--yurt needs a command", "e.g. --yurt '/opt/yurt/bin/yurt'")
        elif name == "prestage":
            prestage = True
        elif name == "no-sharens":
            sharens = False
        elif explicit or (name in by_name and name not in SRUN_OWNED):
            flag = by_name[name[5:] if explicit else name]
            exec_args.append(f"--{flag.name}" + (f"={value}" if eq else ""))
            if flag.kind != "bool" and not eq:
                if i >= len(argv):
                    raise UsageError(f"--{name} needs a value ({flag.metavar})")
                exec_args.append(argv[i])
                i += 1
        else:
            srun_args.append(arg)
    else:
        raise UsageError("yurt srun needs '--' before the command", "yurt srun --image IMG [options] -- APP [ARGS]")
    command = argv[i:]
    if image is None:
        raise UsageError("yurt srun needs --image IMG")
    if not command:
        raise UsageError("yurt srun needs a command after '--'")
    return SrunRequest(image, mounts, prestage, yurt, exec_args, srun_args, command, sharens)


def exec_args(req: SrunRequest) -> list[str]:
    out = list(req.exec_args)
    if req.mounts:
        out.append("--bind=" + ",".join(req.mounts))
    if req.prestage and "--unsquash" not in out:
        out.append("--unsquash")
    if req.sharens and not any(a.split("=", 1)[0] in UNSHARED for a in out):
        out.append("--sharens")
    return out


def main_command(req: SrunRequest, yurt: list[str]) -> list[str]:
    """``srun SRUN_ARGS YURT exec EXEC_ARGS IMAGE COMMAND...``."""
    return ["srun", *req.srun_args, *yurt, "exec", *exec_args(req), req.image, *req.command]


def prestage_command(req: SrunRequest, yurt: list[str]) -> list[str]:
    """One task per node of the allocation: unpack the image into the node-local cache."""
    placement: list[str] = []
    args = req.srun_args
    for j, a in enumerate(args):
        name = a.split("=", 1)[0]
        if name in PLACEMENT:
            placement.append(a)
            if "=" not in a and not (len(name) == 2 and len(a) > 2) and j + 1 < len(args):
                placement.append(args[j + 1])
        elif any(a.startswith(p) and len(p) == 2 and len(a) > 2 for p in PLACEMENT if len(p) == 2):
            placement.append(a)  # -N2, -wnode1
    return ["srun", *placement, "--ntasks-per-node=1", *yurt, "exec", "--unsquash", req.image, "/bin/true"]
