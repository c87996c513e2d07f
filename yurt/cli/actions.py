"""``yurt exec | run | shell``: flags -> ActionRequest -> ContainerSpec -> launch; also into an instance.

``yurt exec instance://NAME`` (joining a running instance) is here too: :mod:`yurt.cli.instance`
starts instances with this module's flags and planning, so this module must not import that one.
The built-in hooks of the layers above the runtime are wired in here (:data:`INTEGRATIONS`).
"""

from __future__ import annotations

import sys

from yurt.cli.options import REGISTRY_FLAGS, Flag, parse_command
from yurt.errors import UsageError

# Apptainer options yurt cannot honour: each is refused in one line saying why (yurt.cli.apptainer.REFUSED).
REFUSED_ACTION_FLAGS = (
    ("add-caps", "value"), ("security", "list"), ("allow-setuid", "bool"), ("boot", "bool"),
    ("fusemount", "list"), ("network-args", "list"), ("dns", "value"), ("netns-path", "value"),
    ("apply-cgroups", "value"), ("blkio-weight", "value"), ("blkio-weight-device", "list"),
    ("cpu-shares", "value"), ("cpuset-mems", "value"), ("memory-reservation", "value"), ("memory-swap", "value"),
    ("oom-kill-disable", "bool"), ("dmtcp-launch", "value"), ("dmtcp-restart", "value"), ("nvccli", "bool"),
    ("intel-hpu", "bool"), ("compat32", "bool"), ("containlibs", "list"), ("ignore-userns", "bool"),
    ("docker-login", "bool"), ("docker-host", "value"), ("library", "value"), ("passphrase", "bool"),
    ("pem-path", "value"),
)

FLAGS = [
    Flag("bind", "list", "B", "bind src[:dst[:ro|rw]] (comma list, repeatable)", "SPEC", env=("BINDPATH",)),
    Flag("home", "value", "H", "home directory to bind: src[:dst]", "SPEC"),
    Flag("no-home", help="do not bind the home directory"),
    Flag("pwd", "value", None, "initial working directory inside the container", "DIR", aliases=("cwd",),
         env=("CWD", "TARGET_PWD", "TARGET_CWD")),
    Flag("contain", short="c", help="minimal /dev and empty /tmp, /var/tmp and home (--contain=false: not even "
         "when the config says contain = true)", unset_none=True),
    Flag("containall", short="C", help="--contain plus --pid, --ipc and --cleanenv"),
    Flag("pid", short="p", help="new PID namespace (payload runs under a tiny init)", env=("UNSHARE_PID",)),
    Flag("ipc", short="i", help="new IPC namespace", env=("UNSHARE_IPC",)),
    Flag("net", short="n", help="new network namespace with loopback only", env=("UNSHARE_NET",)),
    Flag("uts", help="new UTS namespace", env=("UNSHARE_UTS",)),
    Flag("hostname", "value", None, "hostname inside (implies --uts)", "NAME"),
    Flag("cleanenv", short="e", help="do not pass the host environment"),
    Flag("env", "list", None, "set KEY=VALUE inside (repeatable)", "K=V"),
    Flag("env-file", "value", None, "read KEY=VALUE lines from FILE", "FILE"),
    Flag("fakeroot", short="f", help="be root inside (user namespace; subuid range when available)"),
    Flag("writable", short="w", help="write into a sandbox directory image itself"),
    Flag("writable-tmpfs", help="writable tmpfs layer over the image (discarded at exit)"),
    Flag("writable-tmpfs-size", "int", None, "size of that layer in MiB (default 64)", "MIB", bounds=(1, 1 << 20)),
    Flag("overlay", "list", "o", "writable overlay directory DIR (DIR:ro for read-only; repeatable)", "DIR",
         env=("OVERLAYIMAGE",)),
    Flag("workdir", "value", "W", "with --contain, back /tmp and /var/tmp by this directory", "DIR"),
    Flag("unsquash", help="unpack a SIF into the node-local cache instead of mounting it"),
    Flag("no-init", help="with --pid, run the payload itself as PID 1", env=("NOSHIMINIT",)),
    Flag("shell", "value", "s", "shell to start (yurt shell)", "PATH"),
    Flag("app", "value", None, "SCIF app: run/test its scripts, with its environment", "NAME"),
    Flag("ignore-subuid", help="with --fakeroot, map only your own id even if /etc/subuid has a range"),
    Flag("fake-ownership", help="make chown, mknod and set*id calls succeed as no-ops (seccomp), so package "
         "managers work in a single-id --fakeroot"),
    Flag("nv", help="bind the host's NVIDIA driver (libraries, nvidia-smi, /dev/nvidia*) into the container"),
    Flag("rocm", help="bind the host's AMD ROCm driver (libraries, rocm-smi, /dev/kfd, /dev/dri)"),
    Flag("device", "list", None, "add a CDI device vendor.com/class=name (repeatable)", "NAME"),
    Flag("cdi-dirs", "list", None, "read CDI specs from these directories (default /etc/cdi,/var/run/cdi)",
         "DIRS"),
    Flag("hooks-dir", "list", None, "more OCI hook definitions (oci-hooks(5) JSON files; repeatable)", "DIR"),
    Flag("mpi", "value", None, "MPI model: hybrid (default: the image's MPI, host launcher), host (bind the "
         "host's MPI library after an ABI check), none", "MODEL", choices=("hybrid", "host", "none")),
    Flag("sharens", help="share one container with the other processes of this job step on this node (MPI "
         "ranks: one user namespace per node, shared-memory single copy works)"),
    Flag("sharens-tag", "value", None, "what --sharens groups by (default SLURM_JOB_ID.SLURM_STEP_ID, or the "
         "PMIx namespace)", "TAG"),
    Flag("memory", "value", None, "memory limit, swap included (512M, 2G; cgroups)", "SIZE"),
    Flag("cpus", "value", None, "CPU time limit, in CPUs (1.5)", "N"),
    Flag("pids-limit", "int", None, "most processes and threads at once", "N", bounds=(1, 1 << 22)),
    Flag("cpuset", "value", None, "run only on these CPUs (0-3,6)", "LIST", aliases=("cpuset-cpus",)),
    Flag("allow-no-limits", help="warn instead of failing when a limit cannot be applied"),
    *REGISTRY_FLAGS,
]
# Apptainer's options with its meaning, or refused (yurt.cli.apptainer; README, "Using yurt as Apptainer").
APPTAINER_FLAGS = [
    Flag("mount", "list", None, "bind as docker does: type=bind,source=SRC,target=DST[,readonly] (repeatable)",
         "SPEC"),
    Flag("network", "value", None, "with --net: none (loopback only; the one type a rootless container has)",
         "TYPE", choices=("none",)),
    Flag("no-mount", "list", None, "do not mount these: proc, sys, dev, devpts, home, tmp, cwd, hostfs, bind-paths "
         "or a system file's path (comma list)", "LIST"),
    Flag("scratch", "list", "S", "an empty writable directory DIR in the container, gone at exit (repeatable)",
         "DIR", env=("SCRATCHDIR",)),
    Flag("compat", help="as docker does: --containall --writable-tmpfs --no-init --no-umask --no-eval"),
    Flag("no-umask", help="start the payload with umask 0022 instead of yours"),
    Flag("no-eval", help="never evaluate variables or arguments in a shell (yurt never does: accepted)"),
    Flag("no-pid", help="no PID namespace, even with --containall or --compat"),
    Flag("no-privs", help="the container's root (--fakeroot) has no capabilities"),
    Flag("drop-caps", "value", None, "drop these capabilities (CAP_NET_RAW,...) from the container", "CAPS"),
    Flag("no-env", "list", None, "do not pass these host variables into the container (comma list)", "NAMES"),
    Flag("no-nv", help="no --nv (when a variable turned it on)", env=("NV_OFF",)),
    Flag("no-rocm", help="no --rocm (when a variable turned it on)", env=("ROCM_OFF",)),
    Flag("userns", short="u", help="run in a user namespace (rootless yurt always does; never setuid)",
         env=("UNSHARE_USERNS",)),
    Flag("disable-cache", help="pull a docker://... image without the cache (nothing kept)"),
    Flag("keep-privs", help="root keeps its capabilities in the container (as root; yurt drops none)"),
    Flag("underlay", help="accepted: yurt creates missing bind points in its own overlay", hidden=True),
    Flag("runscript-timeout", "value", None, "accepted: yurt runs no timed shell interpreter", "DURATION",
         hidden=True),
    Flag("ignore-fakeroot-command", help="accepted: yurt never uses fakeroot(1)", hidden=True),
    Flag("tmpdir", "value", None, "temporary directory for conversions and builds", "DIR", hidden=True),
    *(Flag(name, kind, None, "not supported by yurt (Apptainer option)", hidden=True)
      for name, kind in REFUSED_ACTION_FLAGS),
]
FLAGS += [*APPTAINER_FLAGS, Flag("help", short="h", help="show this help")]
_APPTAINER_DESTS = tuple(f.dest for f in APPTAINER_FLAGS) + ("authfile",)

# Start options a join must plan with as well (identity and home as the instance has them).
# --insecure and --authfile: a join plans with the reference the instance started from (docker://...), which the
# registry may be asked about again, as it was then.
JOIN_OPTIONS = ("fakeroot", "ignore_subuid", "contain", "containall", "home", "no_home", "workdir", "insecure",
                "authfile")
# Options that shape a container and so only mean something when an instance starts.
_START_ONLY = ("bind", "overlay", "writable", "writable_tmpfs", "net", "ipc", "uts", "hostname", "memory", "cpus",
               "pids_limit", "cpuset", "sharens", "nv", "rocm", "device")

SYNOPSIS = {
    "exec": ("[options] IMAGE COMMAND [ARGS...]", "Run COMMAND inside IMAGE (a .sif file or a directory)."),
    "run": ("[options] IMAGE [ARGS...]", "Run IMAGE's runscript, or its Entrypoint + Cmd."),
    "shell": ("[options] IMAGE", "Start an interactive shell inside IMAGE."),
    "test": ("[options] IMAGE", "Run IMAGE's test script (%test; --app NAME for an app's %apptest)."),
}


def main(command: str, argv: list[str], ctx) -> int:
    parsed = parse_command(command, argv, FLAGS, *SYNOPSIS[command], stop_at_positional=True)
    if parsed is None:
        return 0
    values, positionals = parsed
    if not positionals:
        raise UsageError(f"{command} needs an image", f"yurt {command} {SYNOPSIS[command][0]}")
    if positionals[0].startswith("instance://"):
        join_instance(command, values, positionals, ctx)
    spec, image = plan_from(command, values, positionals, ctx)
    make_rootfs = lambda: _rootfs_for(image, values["unsquash"], ctx.debug)  # noqa: E731
    if values["sharens"]:
        import os

        from yurt.runtime.join import default_tag, sharens_launch

        if "yurt.mpi.single-copy" in spec.annotations:  # one user namespace per step: CMA works
            from yurt.hpc.mpi import for_shared_userns

            for_shared_userns(spec)
        sharens_launch(spec, make_rootfs, values["sharens_tag"] or default_tag(os.environ))
    from yurt.runtime.launcher import launch

    launch(spec, make_rootfs())


def plan_from(command: str, values: dict, positionals: list[str], ctx):
    """Parsed flags and ``IMAGE ARGS...`` -> (ContainerSpec, Image), resource limits included."""
    from yurt.runtime.plan import ActionRequest, parse_binds, plan_container

    later = None
    if any(values.get(d) for d in _APPTAINER_DESTS):  # Apptainer's options: mapped onto yurt's, or refused
        from yurt.cli import apptainer

        later = apptainer.prepare(values, command)
    parse_binds(values["bind"])  # the syntax, before an image is opened or pulled
    values["overlay"] = [check_overlay(o) for o in values["overlay"]]
    # An empty value leaves an option unset, as in Apptainer (where "" is every string option's
    # default): `--app "$APP"` with APP empty runs no app.
    if values["hostname"]:
        check_hostname(values["hostname"])
    from yurt.image.source import PULLED_SCHEMES

    if values.get("disable_cache") and positionals[0].startswith(PULLED_SCHEMES):
        from yurt.cli.pull import without_cache

        with without_cache():  # pulled into a temporary cache, removed once the image is open
            image = _opened(positionals[0], ctx, values)
    else:
        image = _opened(positionals[0], ctx, values)  # a registry's policy is checked by the pull
    size = values["writable_tmpfs_size"]
    req = ActionRequest(
        action=command,
        image=image,
        args=positionals[1:],
        binds=values["bind"],
        home=values["home"],
        no_home=values["no_home"],
        pwd=values["pwd"],
        contain=values["contain"],
        containall=values["containall"],
        pid=values["pid"],
        ipc=values["ipc"],
        net=values["net"],
        uts=values["uts"],
        hostname=values["hostname"],
        cleanenv=values["cleanenv"],
        env=values["env"],
        env_file=values["env_file"],
        fakeroot=values["fakeroot"],
        writable_tmpfs=values["writable_tmpfs"] or size is not None,
        writable_tmpfs_size=size or 64,
        overlays=values["overlay"],
        workdir=values["workdir"],
        shell=values["shell"],
        no_init=values["no_init"],
        ignore_subuid=values["ignore_subuid"],
        writable=values["writable"],
        fake_ownership=values["fake_ownership"],
        app=values["app"],
        debug=ctx.debug,
        image_ref=positionals[0],
        nv=values["nv"],
        rocm=values["rocm"],
        devices=[d for item in values["device"] for d in item.split(",") if d],
        cdi_dirs=values["cdi_dirs"],
        hooks_dirs=[d for item in values["hooks_dir"] for d in item.split(",") if d],
        mpi=values["mpi"],
        integrations=INTEGRATIONS,
        no_mount=later.no_mount if later else [],
        apptainer=getattr(ctx, "apptainer", False),
    )
    host_env = None
    if later and later.no_env:
        import os

        host_env = {k: v for k, v in os.environ.items() if k not in later.no_env}
    spec = plan_container(req, host_env)
    if later:
        from yurt.cli import apptainer

        apptainer.after_plan(spec, later, values["workdir"])
    if values["memory"] or values["cpus"] or values["pids_limit"] is not None or values["cpuset"]:
        from yurt.runtime.cgroups import resources_from_flags

        spec.resources = resources_from_flags(values["memory"], values["cpus"], values["pids_limit"], values["cpuset"])
        spec.extras.allow_no_limits = values["allow_no_limits"]
    if ctx.debug:
        import json

        sys.stderr.write("yurt: debug: spec " + json.dumps(spec.to_oci(image.path), indent=1) + "\n")
    return spec, image


def check_hostname(name: str) -> None:
    """``--hostname``: what sethostname(2) takes and resolvers expect, 1-64 letters, digits, ``-._``."""
    if not (0 < len(name) <= 64 and name.isascii() and all(c.isalnum() or c in "-._" for c in name)
            and not name.startswith(("-", "."))):
        raise UsageError(f"bad --hostname {name!r}", "use 1 to 64 letters, digits, '-', '.' or '_'")


def check_overlay(spec: str) -> str:
    """``--overlay DIR[:ro]`` -> ``/abs/DIR[:ro]``, or a usage error saying which overlay and why.

    Checked here, where the user can be told, rather than when the container's root is assembled.
    """
    import os
    import stat

    path, _, mode = spec.partition(":")
    if mode not in ("", "ro", "rw") or not path:
        raise UsageError(f"bad overlay {spec!r}", "use --overlay DIR or DIR:ro")
    try:
        st = os.stat(path)
    except OSError as e:
        raise UsageError(f"overlay {path}: {e.strerror}", "give an existing directory (DIR, or DIR:ro)")
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"overlay {path} is not a directory", "yurt overlays are directories (DIR, or DIR:ro)")
    if mode != "ro" and not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"overlay {path} is not writable by you", f"use --overlay {path}:ro to stack it read-only")
    return os.path.abspath(path) + (":ro" if mode == "ro" else "")


def join_instance(command: str, values: dict, positionals: list[str], ctx) -> None:
    """``yurt exec|run|shell instance://NAME ...``: the command runs inside the running instance."""
    from yurt.image.rootfs import notice
    from yurt.runtime import instances, join

    name = positionals[0][len(instances.SCHEME):]
    doc, target = instances.target_of(name)
    ignored = [k.replace("_", "-") for k in _START_ONLY if values.get(k)]
    if ignored:
        notice(f"ignored when joining instance {name} (set when it starts): --{', --'.join(ignored)}")
    for k in _START_ONLY:
        if k in values:
            values[k] = [] if isinstance(values[k], list) else (None if k in ("memory", "cpus", "pids_limit",
                                                                                "cpuset", "hostname") else False)
    values.update({k: v for k, v in (doc.get("options") or {}).items() if k in JOIN_OPTIONS})
    # Planned with what the user named at start (docker://..., oci:...), so the site's image rules see
    # the same thing as then, not the cache file behind it.
    image_ref = str(doc.get("image_ref") or doc.get("image") or "")
    spec, _ = plan_from(command, values, [image_ref, *positionals[1:]], ctx)
    spec.process.env.update({"YURT_INSTANCE": name, "APPTAINER_INSTANCE": name, "SINGULARITY_INSTANCE": name})
    sys.stdout.flush()
    join.exec_in(spec, target)


def _mpi_hook(spec, env: dict[str, str]) -> None:
    """``yurt-mpi.json``: PMIx directories and shared memory for MPI ranks, ``--mpi=host``'s binds and check.

    A built-in hook (:mod:`yurt.runtime.hooks`) whose code is in the HPC layer, above the runtime:
    wired in here, and :mod:`yurt.hpc.mpi` is loaded only for a rank or ``--mpi=host``.
    """
    model = spec.annotations.get("yurt.mpi")
    if model:
        from yurt.hpc import mpi

        mpi.plan_edits(spec, env, host=model == "host")


# Built-in hooks of the layers above the runtime, handed to the planner (ActionRequest.integrations).
INTEGRATIONS = {"yurt-mpi.json": _mpi_hook}


def _opened(ref: str, ctx, values: dict | None = None):
    """The image ``ref`` names, opened: a path, or for ``docker://``, ``oras://``, ``oci:``... the cached SIF
    (pulled first when missing), or under a site policy a private copy in memory (yurt.registry.private)."""
    from yurt.image.source import PULLED_SCHEMES, open_image

    if not ref.startswith(PULLED_SCHEMES):
        return open_image(ref)
    from yurt.cli.pull import options_from_environment
    from yurt.registry.pull import open_pulled

    return open_pulled(ref, options_from_environment(ctx, values))


def _rootfs_for(image, unsquash: bool, debug: bool):
    import os

    from yurt.image import rootfs

    if image.produce is not None:  # under a site policy: a registry/OCI image converted in memory, now
        image.produce(image)
    if image.kind == "sandbox":
        return rootfs.DirectoryRootfs(image.path, fd=image.fd)
    return rootfs.squashfs_rootfs(image.path, image.offset, image.size, real_root=os.geteuid() == 0,
                                  unsquash=unsquash, debug=debug, fd=image.fd)
