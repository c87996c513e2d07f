"""yurt: a rootless, daemonless container runtime for HPC.

Kept deliberately empty of imports: ``yurt exec`` is on the hot path of every
MPI rank, so importing the package must cost nothing beyond this file.  The
Python API (:mod:`yurt.api`: ``yurt.run``, ``yurt.execute``, ``yurt.Instance``...)
is loaded by :func:`__getattr__` the first time one of its names is used.
"""

__version__ = "0.1.0"

# The names of yurt.api found here too; `exec` (an alias of `execute`) is one, but not in
# `from yurt.api import *`.  A frozenset literal: nothing to import.
_API = frozenset({
    "api", "ContainerFailed", "ContainerOptions", "ContainerTimeout", "Instance", "InstanceInfo", "KILL_GRACE",
    "Result", "build", "exec", "execute", "inspect", "instances", "pull", "run", "stream", "yurt_command",
})

TYPE_CHECKING = False
if TYPE_CHECKING:  # for type checkers and editors; never at run time
    from yurt.api import (  # noqa: F401
        KILL_GRACE,
        ContainerFailed,
        ContainerOptions,
        ContainerTimeout,
        Instance,
        InstanceInfo,
        Result,
        build,
        execute,
        inspect,
        instances,
        pull,
        run,
        stream,
        yurt_command,
    )


def __getattr__(name: str) -> object:
    """``yurt.run`` and the rest of :mod:`yurt.api`, imported on first use (PEP 562)."""
    if name in _API:
        import importlib

        api = importlib.import_module("yurt.api")
        return api if name == "api" else getattr(api, name)
    raise AttributeError(f"module 'yurt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API} - {"TYPE_CHECKING"})
