"""yurt's Python API: run containers, pull, build and inspect images, manage instances from Python.

Every name here is also at the top of the package (``yurt.run``, ``yurt.Instance``...), loaded the
first time one is used: ``import yurt`` itself stays as cheap as it is for ``yurt exec``.

    import yurt

    r = yurt.execute("busybox.sif", ["sh", "-c", "echo $GREETING; id -u"],
                     env={"GREETING": "hello"}, binds=["/scratch/data:/data:ro"], contain=True)
    print(r.returncode, r.stdout)

    yurt.run("app.sif", ["--input", "/data/x"], check=True)       # the runscript; ContainerFailed if it fails
    for line in yurt.stream("app.sif", ["make", "-j8"]):          # output line by line, as it comes
        print(line, end="")

    sif = yurt.pull("docker://ghcr.io/org/tool:1.2", "tool.sif")  # -> pathlib.Path
    yurt.build("recipe.def", "tool.sif", build_args={"VERSION": "1.2"}, force=True)
    yurt.inspect("tool.sif")["labels"]

    with yurt.Instance("db.sif", binds=["/scratch/db:/data"]) as db:   # stopped at the end of the block
        db.exec(["pg_isready"], check=True)
    yurt.instances()                                               # [InstanceInfo(name=..., pid=...)]

How it runs.  A container takes over the process that starts it (namespaces, ``pivot_root``,
``execve``), so every container runs in a child process: the ``yurt`` command installed with this
package (:func:`yurt_command`), with the same flags as on the command line (keyword options, see
:class:`ContainerOptions`), the caller's environment (or ``host_env``) and working directory (or
``cwd``).  ``pull`` and ``inspect`` start no container and run in this process; ``instances`` reads
yurt's state directory.

Errors.  yurt's own failures raise the exceptions of :mod:`yurt.errors` the command line reports
(:class:`~yurt.errors.UsageError` for a bad flag or name, :class:`~yurt.errors.ImageError`,
:class:`~yurt.errors.PolicyError`, :class:`~yurt.errors.PayloadNotFound` for a missing command...),
with the message of its ``yurt: error:`` line and, where a child ran, the :class:`Result` as
``error.result``.  The program in the container exiting non-zero is not an error of yurt's: its status
is ``Result.returncode``, and only ``check=True`` raises :class:`ContainerFailed` (also a
:class:`subprocess.CalledProcessError`).  A ``timeout`` that runs out stops the container (SIGTERM,
then SIGKILL) and raises :class:`ContainerTimeout` (also a :class:`subprocess.TimeoutExpired`).
"""

from __future__ import annotations

from yurt.api.containers import ContainerOptions, execute, run, stream
from yurt.api.images import build, inspect, pull
from yurt.api.instances import Instance, InstanceInfo, instances
from yurt.api.process import KILL_GRACE, ContainerFailed, ContainerTimeout, Result, yurt_command

exec = execute  # noqa: A001 - ``yurt.exec(image, args)`` as on the command line; ``execute`` as in spython

__all__ = [
    "KILL_GRACE",
    "ContainerFailed",
    "ContainerOptions",
    "ContainerTimeout",
    "Instance",
    "InstanceInfo",
    "Result",
    "build",
    "execute",
    "inspect",
    "instances",
    "pull",
    "run",
    "stream",
    "yurt_command",
]
