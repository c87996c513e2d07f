"""A minimal ``/dev`` for ``--contain``: a few bound host nodes, not the host's ``/dev``.

An unprivileged user namespace cannot ``mknod``, so, as rootless Podman does,
the character devices are bind mounts of the host's own nodes onto empty
files in a small tmpfs; ``/dev/pts`` is a fresh devpts instance, ``/dev/shm``
a private tmpfs.
"""

from __future__ import annotations

import os

from yurt import syscalls as sc

NODES = ("null", "zero", "full", "random", "urandom", "tty")
LINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
    "ptmx": "pts/ptmx",
}


def extra_nodes(options: list[str]) -> list[tuple[str, str]]:
    """``node=HOST:NAME`` options of a devdir mount (GPUs, CDI devices): host node -> ``/dev/NAME``."""
    out = []
    for o in options:
        if o.startswith("node="):
            host, _, name = o[5:].rpartition(":")
            out.append((host, name))
    return out


def mount_minimal_dev(dev: str, *, ipc_namespace: bool, nodes: list[tuple[str, str]] = (),
                      devpts: bool = True) -> None:
    """A tmpfs /dev with the usual nodes, links, /dev/shm and (unless ``devpts`` is false: ``--no-mount
    devpts``) a new devpts instance on /dev/pts."""
    sc.mount("tmpfs", dev, "tmpfs", sc.MS_NOSUID | sc.MS_NOEXEC | sc.MS_STRICTATIME,
             "mode=0755,size=1m,nr_inodes=4096")
    for name in NODES:
        host = f"/dev/{name}"
        if not os.path.exists(host):
            continue
        target = os.path.join(dev, name)
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o666))
        sc.mount(host, target, None, sc.MS_BIND)
    for name, dest in LINKS.items():
        os.symlink(dest, os.path.join(dev, name))
    pts = os.path.join(dev, "pts")
    os.mkdir(pts, 0o755)
    try:
        if devpts:
            sc.mount("devpts", pts, "devpts", sc.MS_NOSUID | sc.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")
    except OSError:
        # Some kernels refuse a new devpts here: fall back to the host's.
        sc.mount("/dev/pts", pts, None, sc.MS_BIND | sc.MS_REC)
    for host, name in nodes:  # host nodes or node directories (/dev/dri), bound where asked
        target = os.path.join(dev, name)
        os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
        if os.path.isdir(host):
            os.makedirs(target, 0o755, exist_ok=True)
        elif not os.path.exists(target):
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o666))
        sc.mount(host, target, None, sc.MS_BIND | sc.MS_REC)
    shm = os.path.join(dev, "shm")
    os.mkdir(shm, 0o1777)
    sc.mount("tmpfs", shm, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=1777")
    if ipc_namespace:
        mq = os.path.join(dev, "mqueue")
        os.mkdir(mq, 0o755)
        try:
            sc.mount("mqueue", mq, "mqueue", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
        except OSError:
            os.rmdir(mq)
