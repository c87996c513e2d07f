"""``yurt exec | run | shell``: flags -> ActionRequest -> ContainerSpec -> launch."""

from __future__ import annotations

import sys

from yurt.cli.options import Flag, parse_command
from yurt.errors import UsageError

FLAGS = [
    Flag("bind", "list", "B", "bind src[:dst[:ro|rw]] (comma list, repeatable)", "SPEC", env=("YURT_BINDPATH",)),
    Flag("home", "value", "H", "home directory to bind: src[:dst]", "SPEC"),
    Flag("no-home", help="do not bind the home directory"),
    Flag("pwd", "value", None, "initial working directory inside the container", "DIR", aliases=("cwd",)),
    Flag("contain", short="c", help="minimal /dev and empty /tmp, /var/tmp and home"),
    Flag("containall", short="C", help="--contain plus --pid, --ipc and --cleanenv"),
    Flag("pid", short="p", help="new PID namespace (payload runs under a tiny init)"),
    Flag("ipc", short="i", help="new IPC namespace"),
    Flag("net", short="n", help="new network namespace with loopback only"),
    Flag("uts", help="new UTS namespace"),
    Flag("hostname", "value", None, "hostname inside (implies --uts)", "NAME"),
    Flag("cleanenv", short="e", help="do not pass the host environment"),
    Flag("env", "list", None, "set KEY=VALUE inside (repeatable)", "K=V"),
    Flag("env-file", "value", None, "read KEY=VALUE lines from FILE", "FILE"),
    Flag("fakeroot", short="f", help="be root inside (user namespace; subuid range when available)"),
    Flag("writable", short="w", help="write into a sandbox directory image itself"),
    Flag("writable-tmpfs", help="writable tmpfs layer over the image (discarded at exit)"),
    Flag("writable-tmpfs-size", "int", None, "size of that layer in MiB (default 64)", "MIB"),
    Flag("overlay", "list", "o", "writable overlay directory DIR (DIR:ro for read-only; repeatable)", "DIR"),
    Flag("workdir", "value", "W", "with --contain, back /tmp and /var/tmp by this directory", "DIR"),
    Flag("unsquash", help="unpack a SIF into the node-local cache instead of mounting it"),
    Flag("no-init", help="with --pid, run the payload itself as PID 1"),
    Flag("shell", "value", "s", "shell to start (yurt shell)", "PATH"),
    Flag("app", "value", None, "SCIF app: run/test its scripts, with its environment", "NAME"),
    Flag("ignore-subuid", help="with --fakeroot, map only your own id even if /etc/subuid has a range"),
    Flag("fake-ownership", help="make chown, mknod and set*id calls succeed as no-ops (seccomp), so package "
         "managers work in a single-id --fakeroot"),
    Flag("help", short="h", help="show this help"),
]

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
    from yurt.image.source import open_image
    from yurt.runtime.plan import ActionRequest, plan_container

    image = open_image(_pulled(positionals[0], ctx))
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
    )
    spec = plan_container(req)
    if ctx.debug:
        import json

        sys.stderr.write("yurt: debug: spec " + json.dumps(spec.to_oci(image.path), indent=1) + "\n")
    rootfs = _rootfs_for(image, values["unsquash"], ctx.debug)
    from yurt.runtime.launcher import launch

    launch(spec, rootfs)


def _pulled(ref: str, ctx) -> str:
    """``docker://``, ``oras://``, ``oci:``...: the cached SIF (pulled first when missing)."""
    if not ref.startswith(("docker://", "oras://", "oci:", "oci-archive:", "docker-archive:")):
        return ref
    from yurt.cli.pull import options_from_environment
    from yurt.registry.pull import pull

    return str(pull(ref, options_from_environment(ctx)).sif)


def _rootfs_for(image, unsquash: bool, debug: bool):
    import os

    from yurt.image import rootfs

    if image.kind == "sandbox":
        return rootfs.DirectoryRootfs(image.path)
    return rootfs.squashfs_rootfs(image.path, image.offset, image.size, real_root=os.geteuid() == 0,
                                  unsquash=unsquash, debug=debug)
