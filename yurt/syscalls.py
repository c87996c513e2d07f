"""Thin ctypes bindings for the Linux calls the launcher needs.

Python 3.11 has no ``os.unshare``/``os.setns`` and no wrappers at all for
``mount``, ``pivot_root`` or ``mount_setattr``, so they come from libc through
ctypes.  Everything here raises :class:`OSError` with the errno and a message
naming the call and its target, so the launcher can turn it into one clear
line.  Imported only by the runtime (``ctypes`` costs a few milliseconds).
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)

# clone/unshare flags (linux/sched.h)
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# mount flags (linux/mount.h)
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24

MNT_DETACH = 2

# mount_setattr (linux/mount.h)
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
AT_RECURSIVE = 0x8000
AT_EMPTY_PATH = 0x1000

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_SET_CHILD_SUBREAPER = 36

_ARCH = os.uname().machine
# Architecture-specific numbers of the calls glibc does not wrap.
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "riscv64": 41}.get(_ARCH)
_SYS_SETNS = {"x86_64": 308, "aarch64": 268, "ppc64le": 350, "riscv64": 268}.get(_ARCH)
# New-style calls share one number on every architecture.
_SYS_OPENAT2 = 437
_SYS_MOUNT_SETATTR = 442

# openat2 resolve flags (linux/openat2.h)
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10


def _check(ret: int, what: str, target: str = "") -> int:
    if ret == -1:
        err = ctypes.get_errno()
        detail = f"{what} {target}".strip()
        raise OSError(err, f"{detail}: {os.strerror(err)}")
    return ret


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    if _SYS_SETNS is None:
        _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")
    else:
        _check(_libc.syscall(_SYS_SETNS, ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    ret = _libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data))
    _check(ret, f"mount {fstype or ''} {source or ''} on".replace("  ", " "), target)


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), ctypes.c_int(flags)), "umount", target)


def pivot_root(new_root: str, put_old: str) -> None:
    if _SYS_PIVOT_ROOT is None:
        raise OSError(38, f"pivot_root: unsupported architecture {_ARCH}")
    _check(_libc.syscall(_SYS_PIVOT_ROOT, _b(new_root), _b(put_old)), "pivot_root", new_root)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """``openat2(2)`` (Linux >= 5.6): ``open`` relative to ``dirfd`` with ``RESOLVE_*`` limits.

    Raises OSError; ENOSYS (old kernel) or EPERM (a seccomp filter that does not know the
    call) tell the caller to fall back to a component-by-component walk.
    """
    how = _OpenHow(flags, mode, resolve)
    ret = _libc.syscall(_SYS_OPENAT2, ctypes.c_int(dirfd), _b(path), ctypes.byref(how),
                        ctypes.c_size_t(ctypes.sizeof(how)))
    return _check(ret, "openat2", path)


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def mount_setattr(path: str, attr_set: int, recursive: bool = True) -> None:
    """Set mount attributes on a whole subtree (Linux >= 5.12).

    Unlike a ``MS_REMOUNT`` it only adds flags, so it cannot trip over the
    flags the kernel locks on mounts inherited by a user namespace.
    """
    attr = _MountAttr(attr_set, 0, 0, 0)
    flags = AT_RECURSIVE if recursive else 0
    ret = _libc.syscall(
        _SYS_MOUNT_SETATTR, ctypes.c_int(-100), _b(path), ctypes.c_uint(flags),
        ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    _check(ret, "mount_setattr", path)


def prctl(option: int, arg2: int = 0) -> int:
    return _check(
        _libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(0), ctypes.c_ulong(0),
                    ctypes.c_ulong(0)),
        "prctl",
    )


def set_no_new_privs() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def default_signal_action(signum: int) -> None:
    """Reset a signal to SIG_DFL right before ``execve`` (Python ignores SIGPIPE and SIGXFSZ).

    Done through libc so the exec path need not import ``signal`` (and ``enum``).
    """
    _libc.signal(ctypes.c_int(signum), ctypes.c_void_p(0))


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname", name)
