"""OCI hooks: which ones a container gets (oci-hooks(5) definitions), and running them at each stage.

Definitions
    JSON files in the oci-hooks(5) 1.0.0 format (``{"version": "1.0.0",
    "hook": {"path", "args", "env", "timeout"}, "when": {"always",
    "annotations", "commands", "hasBindMounts"}, "stages": [...]}``), read
    from the site's ``/etc/yurt/hooks.d`` (``$YURT_SYSCONFDIR/hooks.d``), the
    user's ``~/.config/yurt/hooks.d`` and each ``--hooks-dir``.  A hook is
    added when *all* the conditions it sets match (regular expressions are
    searched, as Go's ``regexp.MatchString`` does); matching hooks are added
    in the order of their lower-cased file names.  The user's directories add
    hooks but cannot mask a site file of the same name.

Built-in hooks
    yurt's own integrations are virtual hook files of the lowest precedence:
    ``yurt-nvidia.json`` (``--nv``), ``yurt-rocm.json`` (``--rocm``),
    ``yurt-mpi.json`` (MPI ranks and ``--mpi=host``: :mod:`yurt.hpc.mpi`; the
    ``yurt.mpi`` annotation says ``hybrid`` or ``host``) and
    ``yurt-infiniband.json`` (``/dev/infiniband`` and the verbs/libfabric
    providers, whenever the host has them).  They edit the ContainerSpec at
    plan time (no process is started).  The runtime's own are :data:`BUILTINS`;
    ``yurt-mpi.json`` belongs to the layer above (:mod:`yurt.hpc`), so the
    command line hands it in (``integrate(integrations=...)``, from
    :data:`yurt.cli.actions.INTEGRATIONS`): the runtime imports nothing above it.  A file of the same name in a hooks
    directory replaces one: e.g. a site that prefers the NVIDIA Container
    Toolkit writes ``/etc/yurt/hooks.d/yurt-nvidia.json`` with its
    ``nvidia-container-runtime-hook`` and ``"when": {"annotations":
    {"^yurt\\\\.nv$": "^true$"}}`` (``--nv`` sets that annotation), and a
    file with ``"when": {"always": false}`` simply turns a built-in off.

Stages, as yurt runs them
    yurt normally ``execve``\\ s the payload and keeps no process behind, but
    hooks need one in the caller's ("runtime") namespaces, so a container
    with any hook is supervised: yurt forks before creating namespaces; the
    parent stays on the host, forwards signals, and exits with the payload's
    status.

    * ``prestart``, ``createRuntime``: run by the parent on the host, after
      the container's namespaces and mounts exist and before ``pivot_root``;
      the container waits for them.
    * ``createContainer``: run by the container process, in the container's
      namespaces, after the mounts, before ``pivot_root`` (the path is a host
      path); ``root.path`` of the bundle's ``config.json`` is the new root as
      seen there.
    * ``startContainer``: run inside the container after ``pivot_root`` (the
      path is resolved in the container), right before the payload's
      ``execve``; only ``os`` calls, nothing imported.
    * ``poststart``: run by the parent once the payload's ``execve``
      succeeded.
    * ``poststop``: run by the parent after the container's processes are
      gone, before yurt exits.

    Each hook gets the OCI state (``ociVersion``, ``id``, ``status``,
    ``pid`` as seen on the host, ``bundle``, ``annotations``) on stdin, its
    own ``env`` as its whole environment, and yurt's stderr for both stdout
    and stderr.  ``bundle`` is a private directory holding the
    container's ``config.json``, removed after ``poststop``.  A failing
    hook of the first four stages stops the container with one error line
    (``poststop`` still runs); ``poststart``/``poststop`` failures are
    warnings.

Running them is :mod:`yurt.runtime.hookrun` (loaded only for a container that has hooks).
"""

from __future__ import annotations

import os

from yurt.config import sysconf_path
from yurt.errors import UsageError
from yurt.record import Record
from yurt.spec import HOOK_STAGES as STAGES
from yurt.spec import ContainerSpec, Hook

TYPE_CHECKING = False  # typing costs milliseconds on the exec path
if TYPE_CHECKING:
    from collections.abc import Callable

    Builtin = Callable[[ContainerSpec, dict[str, str]], None]  # a built-in hook: edits the planned spec


class HookDefinition(Record):
    """One oci-hooks(5) file, parsed.  ``None`` conditions are unset."""

    __slots__ = ("name", "source", "hook", "always", "annotations", "commands", "has_bind_mounts", "stages")
    name: str
    source: str
    hook: Hook
    always: bool | None
    annotations: dict[str, str] | None
    commands: list[str] | None
    has_bind_mounts: bool | None
    stages: list[str]


def parse_definition(doc: object, source: str) -> HookDefinition:
    """Validate one hook file's document (1.0.0 schema); errors name the file."""
    def bad(why: str) -> UsageError:
        return UsageError(f"bad hook definition {source}: {why}", "see oci-hooks(5)")

    if not isinstance(doc, dict):
        raise bad("not a JSON object")
    if doc.get("version") != "1.0.0":
        raise bad(f"version must be \"1.0.0\", not {doc.get('version')!r}")
    hook, when, stages = doc.get("hook"), doc.get("when"), doc.get("stages")
    if not isinstance(hook, dict) or not isinstance(hook.get("path"), str) or not hook["path"].startswith("/"):
        raise bad("hook.path must be an absolute path")
    if not isinstance(when, dict) or not when:
        raise bad("when must set at least one condition")
    if not isinstance(stages, list) or not stages or any(s not in STAGES for s in stages):
        raise bad(f"stages must be a non-empty list of {', '.join(STAGES)}")
    for key, kind in (("args", list), ("env", list)):
        if key in hook and not isinstance(hook[key], kind):
            raise bad(f"hook.{key} must be a list of strings")
    timeout = hook.get("timeout")
    if timeout is not None and (not isinstance(timeout, int) or timeout <= 0):
        raise bad("hook.timeout must be a positive number of seconds")
    annotations, commands = when.get("annotations"), when.get("commands")
    if annotations is not None and not (isinstance(annotations, dict)
                                        and all(isinstance(v, str) for v in annotations.values())):
        raise bad("when.annotations must map regular expressions to regular expressions")
    if commands is not None and not (isinstance(commands, list) and all(isinstance(c, str) for c in commands)):
        raise bad("when.commands must be a list of regular expressions")
    for key in ("always", "hasBindMounts"):
        if key in when and not isinstance(when[key], bool):
            raise bad(f"when.{key} must be true or false")
    unknown = set(when) - {"always", "annotations", "commands", "hasBindMounts"}
    if unknown:
        raise bad(f"unknown condition(s) {', '.join(sorted(unknown))}")
    return HookDefinition(name=os.path.basename(source), source=source, hook=Hook.from_oci(hook),
                          always=when.get("always"), annotations=annotations, commands=commands,
                          has_bind_mounts=when.get("hasBindMounts"), stages=list(stages))


def matches(d: HookDefinition, args: list[str], annotations: dict[str, str], has_bind_mounts: bool) -> bool:
    """Whether every condition ``d`` sets holds (oci-hooks(5) 1.0.0)."""
    if d.always is not None and not d.always:
        return False
    if d.has_bind_mounts is not None and not (d.has_bind_mounts and has_bind_mounts):
        return False
    if d.annotations or d.commands:
        import re

        try:
            for kre, vre in (d.annotations or {}).items():
                if not any(re.search(kre, k) and re.search(vre, v) for k, v in annotations.items()):
                    return False
            if d.commands and not (args and any(re.search(c, args[0]) for c in d.commands)):
                return False
        except re.error as e:
            raise UsageError(f"bad regular expression in hook definition {d.source}: {e}")
    return True


# --- the runtime's own built-in hooks ----------------------------------------------------------
#
# A built-in hook is a function ``(spec, env) -> None`` that edits the planned ContainerSpec in the parent.
# It reads what was asked for from the annotations integrate() set first (``yurt.nv``, ``yurt.rocm``,
# ``yurt.mpi``), as a real hook's "when" condition would.  The layers above the runtime add their own through
# ``integrate(integrations=...)``: the runtime imports none of them.


def _nvidia(spec: ContainerSpec, env: dict[str, str]) -> None:
    if spec.annotations.get("yurt.nv") == "true":
        from yurt.runtime import gpu

        gpu.apply_discovery(spec, gpu.discover(gpu.NVIDIA, env), gpu.driver_root(env))


def _rocm(spec: ContainerSpec, env: dict[str, str]) -> None:
    if spec.annotations.get("yurt.rocm") == "true":
        from yurt.runtime import gpu

        gpu.apply_discovery(spec, gpu.discover(gpu.ROCM, env), gpu.driver_root(env))


def _infiniband(spec: ContainerSpec, env: dict[str, str]) -> None:
    if os.path.isdir(os.path.join(env.get("YURT_DRIVER_ROOT") or "/", "dev/infiniband")):
        from yurt.runtime import gpu

        gpu.infiniband_edits(spec, env)


BUILTINS: dict[str, Builtin] = {"yurt-infiniband.json": _infiniband, "yurt-nvidia.json": _nvidia,
                                "yurt-rocm.json": _rocm}


def site_dir(env: dict[str, str]) -> str:
    return sysconf_path("hooks.d", env)


def user_dir(env: dict[str, str]) -> str:
    config = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".config")
    return os.path.join(config, "yurt", "hooks.d")


def collect(site: str, user_dirs: list[str], builtins=BUILTINS) -> list[tuple[str, str | None]]:
    """``(file name, path or None for a built-in)``, sorted as oci-hooks(5) orders injection.

    Site files mask the built-ins; user and ``--hooks-dir`` files mask the
    built-ins and each other (the last directory given wins) but never a
    site file.
    """
    chosen: dict[str, str | None] = dict.fromkeys(builtins)
    site_names: set[str] = set()
    for d, is_site in [(site, True)] + [(u, False) for u in user_dirs]:
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for n in names:
            if not n.endswith(".json") or (not is_site and n in site_names):
                continue
            chosen[n] = os.path.join(d, n)
            if is_site:
                site_names.add(n)
    return sorted(chosen.items(), key=lambda item: item[0].lower())


def load(path: str) -> HookDefinition:
    import json

    from yurt.readfile import MIB, read_file

    raw = read_file(path, "hook definition", MIB)  # bounded; a FIFO in a --hooks-dir does not hang
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError included
        raise UsageError(f"bad hook definition {path}: not JSON ({e})")
    return parse_definition(doc, path)


def integrate(spec: ContainerSpec, *, nv: bool = False, rocm: bool = False, mpi: str | None = None,
              devices: list[str] | None = None, cdi_dirs: list[str] | None = None, hooks_dirs: list[str] | None = None,
              has_bind_mounts: bool = False, env: dict[str, str] | None = None, site=None,
              integrations: dict[str, Builtin] | None = None) -> ContainerSpec:
    """Add devices (CDI, built-in MPI/GPU/network integrations) and the matching OCI hooks to ``spec``.

    ``mpi``: None (not an MPI rank), ``hybrid`` (the image's MPI) or ``host`` (bind the host's).
    ``integrations``: the built-in hooks of the layers above this one (``yurt-mpi.json`` of
    :mod:`yurt.hpc`, handed in by the command line), added to the runtime's own :data:`BUILTINS`.
    """
    builtins = {**BUILTINS, **integrations} if integrations else BUILTINS
    env = dict(os.environ) if env is None else env
    if mpi:
        spec.annotations["yurt.mpi"] = mpi
    if nv:
        spec.annotations["yurt.nv"] = "true"
    if rocm:
        spec.annotations["yurt.rocm"] = "true"
    if devices:
        from yurt.runtime import cdi

        cdi.apply(spec, devices, cdi.cdi_dirs(cdi_dirs), site)
    for name, path in collect(site_dir(env), [user_dir(env), *(hooks_dirs or [])], builtins):
        if path is None:
            before = len(spec.mounts)
            builtins[name](spec, env)
            if site is not None:  # host files found through the user's PATH, YURT_DRIVER_ROOT, YURT_MPI_LIBRARY...
                for m in spec.mounts[before:]:
                    if m.kind == "bind" and m.source:
                        site.check_bind(m.source, f"{name[len('yurt-'):-len('.json')]} integration bind")
            continue
        d = load(path)
        if matches(d, spec.process.args, spec.annotations, has_bind_mounts):
            for stage in d.stages:
                spec.hooks.setdefault(stage, []).append(d.hook)
    return spec
