"""What the user asked for (an ActionRequest) -> a ContainerSpec, as plain data.

Everything Apptainer users rely on is decided here, without privileges, so it
is unit-testable: default binds, ``--contain`` rules, identity, the mount
order (dev, system files, kernel filesystems, home, tmp, generated files, user
binds sorted by destination, then the working directory), environment.
"""

from __future__ import annotations

import os
import posixpath

from yurt.errors import UsageError
from yurt.image.source import Image
from yurt.record import Record
from yurt.runtime import environment, idmap
from yurt.spec import (
    NS_IPC,
    NS_MOUNT,
    NS_NET,
    NS_PID,
    NS_USER,
    NS_UTS,
    ContainerSpec,
    Mount,
    Process,
    YurtExtras,
)

SYSTEM_FILES = ("/etc/localtime", "/etc/hosts")
# Set by mpirun/srun for each rank (yurt.hpc.mpi.RANK_MARKERS; repeated here to keep exec lean).
MPI_RANK_MARKERS = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE", "SLURM_STEP_ID")


def valid_app_name(name: str) -> bool:
    """SCIF app names become paths: letters, digits and ``_.+-``, not starting with a dot or dash."""
    return bool(name) and (name[0].isalnum() or name[0] == "_") and all(
        c.isascii() and (c.isalnum() or c in "_.+-") for c in name)


class ActionRequest(Record):
    """What ``yurt exec|run|shell`` was asked to do, flags already parsed."""

    __slots__ = ("action", "image", "args", "binds", "home", "no_home", "pwd", "contain", "containall", "pid",
                 "ipc", "net", "uts", "hostname", "cleanenv", "env", "env_file", "fakeroot", "writable_tmpfs",
                 "writable_tmpfs_size", "overlays", "workdir", "shell", "no_init", "ignore_subuid", "writable",
                 "fake_ownership", "app", "debug", "site", "image_ref", "nv", "rocm", "devices", "cdi_dirs",
                 "hooks_dirs", "mpi", "run_as", "image_tmp", "integrations", "no_mount", "apptainer")
    _defaults = {"args": list, "binds": list, "home": None, "no_home": False, "pwd": None, "contain": False,
                 "containall": False, "pid": False, "ipc": False, "net": False, "uts": False, "hostname": None,
                 "cleanenv": False, "env": list, "env_file": None, "fakeroot": False, "writable_tmpfs": False,
                 "writable_tmpfs_size": 64, "overlays": list, "workdir": None, "shell": None, "no_init": False,
                 "ignore_subuid": False, "writable": False, "fake_ownership": False, "app": None,
                 "debug": False, "site": True, "image_ref": None, "nv": False, "rocm": False, "devices": list,
                 "cdi_dirs": list, "hooks_dirs": list, "mpi": None, "run_as": None, "image_tmp": False,
                 "integrations": dict, "no_mount": list, "apptainer": False}
    action: str  # exec | run | shell
    image: Image
    args: list[str]
    binds: list[str | Bind]  # -B specs, and --mount's binds already made
    home: str | None
    no_home: bool
    pwd: str | None
    contain: bool | None  # None: the config's ``contain`` default (yurt.config)
    containall: bool
    pid: bool
    ipc: bool
    net: bool
    uts: bool
    hostname: str | None
    cleanenv: bool
    env: list[str]
    env_file: str | None
    fakeroot: bool
    writable_tmpfs: bool
    writable_tmpfs_size: int
    overlays: list[str]
    workdir: str | None
    shell: str | None
    no_init: bool
    ignore_subuid: bool
    writable: bool
    fake_ownership: bool
    app: str | None
    debug: bool
    # Apply the site and user configuration (yurt.config): site binds, denied binds, the image
    # location/owner rules and the ``contain`` default.  Build steps turn it off, as Apptainer builds
    # with a default configuration (--build-config): they bind only what the build itself needs.
    site: bool
    image_ref: str | None  # what the user named (a path, docker://..., oci-archive:...); None: image.path
    nv: bool  # --nv: the host's NVIDIA driver (yurt.runtime.gpu)
    rocm: bool  # --rocm
    devices: list[str]  # --device vendor/class=name (CDI, yurt.runtime.cdi)
    cdi_dirs: list[str]
    hooks_dirs: list[str]  # --hooks-dir: more oci-hooks(5) definitions (yurt.runtime.hooks)
    mpi: str | None  # --mpi: None/hybrid (the image's MPI), host (bind the host's), none (no MPI help)
    run_as: list[int] | None  # build steps (Dockerfile USER): [uid, gid, *groups] inside a fakeroot namespace
    image_tmp: bool  # build steps: /tmp and /var/tmp are the image's own (what RUN writes there stays in it)
    # Built-in hooks of the layers above the runtime (yurt-mpi.json: yurt.hpc), added to the runtime's own
    # (yurt.runtime.hooks.BUILTINS); the command line hands them in, so the runtime imports nothing above it.
    integrations: dict
    # --no-mount: proc, sys, dev, devpts, home, tmp, cwd, hostfs, bind-paths or a system file's or site
    # bind's destination (Apptainer's words; yurt.cli.apptainer checks them)
    no_mount: list[str]
    apptainer: bool  # started as apptainer/singularity: Apptainer's exit statuses for a missing command


class Bind(Record):
    __slots__ = ("source", "destination", "readonly", "optional")
    _defaults = {"readonly": False, "optional": False}
    source: str
    destination: str
    readonly: bool
    optional: bool  # skipped when the source is gone at mount time (site binds)


def parse_binds(items: list[str | Bind]) -> list[Bind]:
    """``src[:dst[:ro|rw]]``, comma separated, repeatable (Apptainer syntax); a :class:`Bind` already made
    (``--mount``, whose paths may hold ``:`` and ``,``: :func:`make_bind`) is taken as it is.

    An empty value binds nothing (``-B "$EXTRA"`` with EXTRA unset, as Apptainer allows); an
    empty entry in a list (``-B a,,b``, ``-B ,,,``) or an empty source (``-B :``, ``-B :/dst``) is
    a usage error, not silently nothing.
    """
    out: list[Bind] = []
    for item in items:
        if isinstance(item, Bind):
            out.append(item)
            continue
        if not item.strip():  # `-B ''`, YURT_BIND='': no bind, as in Apptainer
            continue
        for spec in item.split(","):
            spec = spec.strip()
            if not spec:
                raise UsageError(f"bad bind list {item!r}: an empty entry", "remove the extra comma")
            parts = spec.split(":")
            if len(parts) > 3:
                raise UsageError(f"bad bind {spec!r}", "use src[:dst[:ro|rw]]")
            if not parts[0]:
                raise UsageError(f"bad bind {spec!r}: no source", "use src[:dst[:ro|rw]]")
            src = os.path.abspath(parts[0])
            dst = parts[1] if len(parts) > 1 and parts[1] else src
            opt = parts[2] if len(parts) > 2 else "rw"
            if len(parts) == 2 and parts[1] in ("ro", "rw"):
                dst, opt = src, parts[1]
            if opt not in ("ro", "rw"):
                raise UsageError(f"bad bind option {opt!r} in {spec!r}", "use ro or rw")
            out.append(make_bind(src, dst, opt == "ro"))
    return out


def make_bind(source: str, destination: str, readonly: bool) -> Bind:
    """One bind from its parts (a relative source is taken from the current directory)."""
    if not destination.startswith("/"):
        raise UsageError(f"bind destination {destination!r} must be an absolute path")
    return Bind(_normalise(os.path.abspath(source)), _normalise(destination), readonly)


# Binds that would hide the kernel's file systems are refused (runc, Apptainer): at /, /proc, /sys and
# /dev, and anywhere below /proc or /sys except the /proc files runc lets lxcfs replace.  Below /dev
# (/dev/shm, /dev/infiniband, GPU nodes) is legitimate and stays allowed.
PROTECTED_DESTINATIONS = ("/", "/proc", "/sys", "/dev")
KERNEL_TREES = ("/proc", "/sys")
LXCFS_PROC_FILES = ("/proc/cpuinfo", "/proc/diskstats", "/proc/meminfo", "/proc/stat", "/proc/swaps",
                    "/proc/uptime", "/proc/loadavg", "/proc/slabinfo", "/proc/net/dev",
                    "/proc/sys/kernel/ns_last_pid")


def check_bind_destination(destination: str, what: str = "bind destination") -> None:
    """UsageError when a user's bind (or ``--home``) would go over ``/``, ``/proc``, ``/sys`` or ``/dev``."""
    dst = _normalise(destination)
    if dst in PROTECTED_DESTINATIONS:
        hidden = "the whole image" if dst == "/" else f"the kernel's {dst}"
        raise UsageError(f"{what} {dst} would hide {hidden}", "choose another destination")
    if dst not in LXCFS_PROC_FILES and any(dst.startswith(t + "/") for t in KERNEL_TREES):
        raise UsageError(f"{what} {dst} would hide files of the kernel's {dst.split('/')[1]} file system",
                         "choose another destination")


def _normalise(path: str) -> str:
    """normpath, and one leading slash: POSIX lets normpath keep "//", which would sort wrongly."""
    return "/" + posixpath.normpath(path).lstrip("/")


def _user_info(uid: int, gid: int) -> tuple[str, str, str, str]:
    """(user name, gecos, shell, group name) of the caller, tolerant of missing entries."""
    import grp
    import pwd

    try:
        pw = pwd.getpwuid(uid)
        name, gecos, shell = pw.pw_name, pw.pw_gecos, pw.pw_shell or "/bin/sh"
    except KeyError:
        name, gecos, shell = os.environ.get("USER", f"user{uid}"), "", "/bin/sh"
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = f"group{gid}"
    return name, gecos, shell, group


def plan_container(req: ActionRequest, host_env: dict[str, str] | None = None, config=None) -> ContainerSpec:
    """``config`` is a :class:`yurt.config.Config` (default: loaded) and matters only with ``req.site``."""
    host_env = dict(os.environ) if host_env is None else host_env
    uid, gid = os.getuid(), os.getgid()
    real_root = os.geteuid() == 0
    if req.site and config is None:
        from yurt.config import load

        config = load()
    site = config if req.site else None
    if site is not None:
        _check_image(req, site)
    contain = bool(site.contain if req.contain is None and site is not None else req.contain) or req.containall
    pid_ns = req.pid or req.containall
    ipc_ns = req.ipc or req.containall
    cleanenv = req.cleanenv or req.containall

    namespaces = [NS_MOUNT]
    uid_maps, gid_maps, multi = [], [], False
    inside_uid, inside_gid = uid, gid
    if not real_root:
        namespaces.insert(0, NS_USER)
        if req.fakeroot:
            name = _user_info(uid, gid)[0]
            uid_maps, gid_maps, multi = idmap.fakeroot_maps(uid, gid, name, use_subid=not req.ignore_subuid)
            inside_uid = inside_gid = 0
        else:
            uid_maps, gid_maps = idmap.true_identity(uid, gid)
    for wanted, ns in ((pid_ns, NS_PID), (ipc_ns, NS_IPC), (req.uts or bool(req.hostname), NS_UTS),
                       (req.net, NS_NET)):
        if wanted:
            namespaces.append(ns)

    user, gecos, shell, group = _user_info(uid, gid)
    host_home = host_env.get("HOME") or os.path.expanduser("~")
    home_src, home_dst = host_home, ("/root" if inside_uid == 0 and not real_root else host_home)
    if req.home:
        src, _, dst = req.home.partition(":")
        home_src = os.path.abspath(src)
        home_dst = dst or home_src
        if not home_dst.startswith("/"):
            raise UsageError(f"--home destination {home_dst!r} must be absolute")
        check_bind_destination(home_dst, "--home destination")

    mounts: list[Mount] = []
    # 1. /dev
    if contain:
        mounts.append(Mount("/dev", "devdir", options=["no-devpts"] if "devpts" in req.no_mount else []))
    else:
        mounts.append(Mount("/dev", "bind", "/dev", ["dev"]))
    # 2. system files
    for f in SYSTEM_FILES:
        mounts.append(Mount(f, "bind", os.path.realpath(f), ["ro"], optional=True))
    # 3. kernel filesystems
    mounts.append(Mount("/proc", "proc") if pid_ns else Mount("/proc", "bind", "/proc"))
    mounts.append(Mount("/sys", "sysfs") if req.net else Mount("/sys", "bind", "/sys"))
    # 4. home
    if not req.no_home:
        if contain and not req.home:
            mounts.append(Mount(home_dst, "tmpfs", None, ["mode=0700", f"uid={inside_uid}", f"gid={inside_gid}"]))
        else:
            if site is not None:
                site.check_bind(home_src, "--home" if req.home else "the home directory (use --no-home or --home)")
            mounts.append(Mount(home_dst, "bind", home_src))
    # 5. /tmp and /var/tmp
    for tmp in ("/tmp", "/var/tmp") if not req.image_tmp else ():
        if contain:
            if req.workdir:
                if site is not None:
                    site.check_bind(os.path.abspath(req.workdir), "--workdir")
                src = os.path.join(os.path.abspath(req.workdir), tmp.strip("/").replace("/", "_"))
                os.makedirs(src, exist_ok=True)
                mounts.append(Mount(tmp, "bind", src))
            else:
                mounts.append(Mount(tmp, "tmpfs", None, ["mode=1777"]))
        else:
            mounts.append(Mount(tmp, "bind", tmp, optional=True))
    # 6. generated identity files and name resolution
    ident = [f"name={user}", f"uid={inside_uid}", f"gid={inside_gid}", f"group={group}",
             f"home={home_dst}", f"shell={shell}", f"gecos={gecos}"]
    if inside_uid != 0:
        mounts.append(Mount("/etc/passwd", "passwd", options=ident))
        mounts.append(Mount("/etc/group", "group", options=ident))
    mounts.append(Mount("/etc/resolv.conf", "bind", os.path.realpath("/etc/resolv.conf"), ["ro"],
                        optional=True))
    # 7. site and user binds, parents before children (a user bind replaces a site bind to the same place)
    binds = parse_binds(req.binds)
    for b in binds:
        check_bind_destination(b.destination)
    if site is not None:
        for b in binds:
            site.check_bind(b.source, "bind source")
        for o in req.overlays:
            site.check_bind(os.path.abspath(o[:-3] if o.endswith(":ro") else o), "--overlay")
        binds += _site_binds(site, {b.destination for b in binds})
    for b in sorted(binds, key=lambda b: b.destination):
        options = ["ro"] if b.readonly else []
        mounts.append(Mount(b.destination, "bind", b.source, options, optional=b.optional))
    # 8. the SIF's runscript object, if it has one, is what `run` runs
    runscript = req.image.objects.get("runscript")
    if runscript is not None and req.action == "run":
        mounts.append(Mount("/.singularity.d/runscript", "file", content=runscript, options=["exec"]))
    # 9. the working directory, where it is not visible already
    host_cwd = _host_cwd()
    if host_cwd and not contain and not req.pwd and binds_cwd(host_cwd) and (
            site is None or site.denied_bind(host_cwd) is None):
        mounts.append(Mount(host_cwd, "bind", host_cwd, ["if-not-visible"], optional=True))
    if req.no_mount:
        mounts = _without(mounts, req.no_mount, home_dst, host_cwd)
    image_env, fallback, workdir = _image_config(req)
    cwd = req.pwd or (workdir if req.action == "run" and workdir else None) or (
        home_dst if contain else host_cwd or home_dst)

    inject = environment.injected_from_host(host_env)
    if req.env_file:
        inject.update(environment.parse_env_file(req.env_file))
    inject.update(environment.parse_env_args(req.env))
    container_vars = {
        "YURT_CONTAINER": req.image.path,
        "YURT_NAME": req.image.name,
        "APPTAINER_CONTAINER": req.image.path,
        "APPTAINER_NAME": req.image.name,
        "SINGULARITY_CONTAINER": req.image.path,
        "SINGULARITY_NAME": req.image.name,
    }
    if req.action == "shell":
        container_vars["PS1"] = "Yurt> "
    if req.app:
        if not valid_app_name(req.app):
            raise UsageError(f"bad app name {req.app!r}", "SCIF app names are letters, digits and ._+-")
        container_vars.update({"SCIF_APPNAME": req.app, "SCIF_APPROOT": f"/scif/apps/{req.app}",
                               "SCIF_APPDATA": f"/scif/data/{req.app}", "APPTAINER_APPNAME": req.app})
    env, late = environment.build_environment(host_env, home=home_dst, cleanenv=cleanenv, image_env=image_env,
                                              inject=inject, container_vars=container_vars)
    args = _action_args(req, fallback)
    env_text = req.image.objects.get("environment", b"").decode("utf-8", "replace")

    annotations = {"yurt.action": req.action, "yurt.image": req.image.path}
    if fallback:
        import json

        annotations["yurt.run.fallback"] = json.dumps(fallback)
    spec = ContainerSpec(
        process=Process(args=args, env=env, cwd=cwd, uid=inside_uid, gid=inside_gid, fallback_cwd=home_dst),
        namespaces=namespaces,
        uid_mappings=uid_maps,
        gid_mappings=gid_maps,
        mounts=mounts,
        hostname=req.hostname,
        root_readonly=not req.writable,
        annotations=annotations,
        extras=YurtExtras(
            run_as=list(req.run_as) if req.run_as else None,
            env_scripts=True,
            inject_env=late,
            env_script_text=env_text,
            writable_tmpfs=req.writable_tmpfs,
            session_size_mb=req.writable_tmpfs_size if req.writable_tmpfs else 16,
            overlays=list(req.overlays),
            init=not req.no_init,
            fakeroot_multi=multi,
            fake_ownership=req.fake_ownership,
            app=req.app,
            debug=req.debug,
            apptainer=req.apptainer,
        ),
    )
    if req.mpi not in (None, "", "hybrid", "host", "none"):
        raise UsageError(f"--mpi={req.mpi}: unknown MPI model", "use hybrid (the default), host or none")
    # MPI help (PMIx directories, Open MPI shared memory, --mpi=host binds) only for ranks or --mpi=host.
    mpi = None
    if req.mpi == "host":
        mpi = "host"
    elif req.mpi != "none" and any(k in host_env for k in MPI_RANK_MARKERS):
        mpi = "hybrid"
    if not req.site:
        return spec  # build steps: no site binds, hooks, devices or MPI/network integrations (as Apptainer)
    from yurt.runtime.hooks import integrate  # MPI, GPUs, CDI devices, network, OCI hooks

    return integrate(spec, nv=req.nv, rocm=req.rocm, mpi=mpi, devices=req.devices, cdi_dirs=req.cdi_dirs,
                     hooks_dirs=req.hooks_dirs, has_bind_mounts=bool(req.binds), env=host_env, site=site,
                     integrations=req.integrations)


# The host's own system trees are never bound over the image's as "the working directory":
# starting yurt from / or /usr must not replace the container's root or /usr with the host's.
SYSTEM_PATHS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/root", "/run",
                "/sbin", "/sys", "/usr", "/var")


def binds_cwd(cwd: str) -> bool:
    """Whether the host working directory is bound into the container (not /, not a system tree;
    /var/tmp is bound anyway)."""
    if cwd == "/":
        return False
    return not any(cwd == p or cwd.startswith(p + "/") for p in SYSTEM_PATHS)


def _without(mounts: list[Mount], words: list[str], home: str, cwd: str | None) -> list[Mount]:
    """``--no-mount``: the mounts left when those named are dropped; a user's own ``-B`` always stays.
    Site binds and the system files are "bind paths" in Apptainer's words (``bind-paths``, or by path)."""
    kinds = {"proc": ("/proc",), "sys": ("/sys",), "dev": ("/dev",), "tmp": ("/tmp", "/var/tmp"), "home": (home,)}
    drop = {d for w in words for d in kinds.get(w, ())}
    bind_paths = {m.destination for m in mounts if m.kind == "bind" and m.optional  # site binds, system files
                  and "if-not-visible" not in m.options and m.destination not in ("/tmp", "/var/tmp")}
    if "bind-paths" in words:
        drop |= bind_paths
    drop |= {w for w in words if w in bind_paths}
    return [m for m in mounts if m.destination not in drop
            and not ("cwd" in words and "if-not-visible" in m.options and m.destination == cwd)]


def _site_binds(site, taken: set[str]) -> list[Bind]:
    """The config's ``site_binds`` whose source exists here, except where a user bind goes."""
    from yurt.config import parse_bind

    out = []
    for spec in site.site_binds:
        src, dst, ro = parse_bind(spec)
        if dst not in taken and os.path.exists(src):
            out.append(Bind(src, dst, ro, optional=True))
    return out


def _check_image(req: ActionRequest, site) -> None:
    """The site's image location/owner rules, on what the user named (a registry image is checked by the
    registry policy when it is pulled; an ``oci:``/archive source by its path; an image named by path on
    the descriptor open_image opened, which is what runs)."""
    if site.allowed_image_paths is None and site.allowed_image_owners is None:
        return
    ref = req.image_ref or req.image.path
    if ref.startswith(("docker://", "oras://")):
        return
    if ref.startswith(("oci:", "oci-archive:", "docker-archive:")):
        from yurt.image.oci_local import parse_source

        site.check_image(parse_source(ref)[1])
        return
    site.check_image(ref, req.image.fd)


def _host_cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:
        return None


def _image_config(req: ActionRequest) -> tuple[dict[str, str], list[str] | None, str | None]:
    """OCI ``Env``, the docker-style ``Entrypoint + Cmd`` for ``run``, and ``WorkingDir``."""
    cfg = req.image.oci_config() or {}
    env: dict[str, str] = {}
    for item in cfg.get("Env") or []:
        k, sep, v = item.partition("=")
        if sep and k:  # execve refuses an empty name
            env[k] = v
    entry = list(cfg.get("Entrypoint") or [])
    cmd = list(cfg.get("Cmd") or [])
    fallback = None
    if req.action == "run" and (entry or cmd):
        fallback = [str(a) for a in entry + (list(req.args) or cmd)]  # docker run: args replace Cmd
    return env, fallback, cfg.get("WorkingDir") or None


def _action_args(req: ActionRequest, fallback: list[str] | None) -> list[str]:
    if req.action == "exec":
        if not req.args:
            raise UsageError("exec needs a command", "yurt exec IMAGE COMMAND [ARGS...]")
        return list(req.args)
    if req.action == "shell":
        if req.shell:
            return [req.shell, *req.args]
        return ["/bin/sh", "-c", 'if [ -x /bin/bash ]; then exec /bin/bash --norc "$@"; fi; exec /bin/sh "$@"',
                "/bin/sh", *req.args]
    if req.action == "run":
        if req.app:
            return [f"/scif/apps/{req.app}/scif/runscript", *req.args]
        return ["/.singularity.d/runscript", *req.args]
    if req.action == "test":
        if req.app:
            return [f"/scif/apps/{req.app}/scif/test", *req.args]
        return ["/.singularity.d/test", *req.args]
    raise UsageError(f"unknown action {req.action}")
