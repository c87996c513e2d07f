"""A seccomp filter that makes ownership and identity calls succeed without doing anything.

With a single-id user namespace (``--fakeroot`` and no ``/etc/subuid``
range) only one uid and gid exist, so package managers fail: ``chown`` to
``_apt`` or ``man`` gives EINVAL, ``setgroups``/``setresuid`` to drop
privileges give EPERM, ``mknod`` gives EPERM.  Charliecloud's answer, used
here for unprivileged builds: a seccomp filter that returns 0 for those calls,
so the package manager carries on and the files simply stay owned by the one
mapped user (they become root-owned when packed into the image).

The filter is a hand-built classic BPF program (no libseccomp needed): check
the architecture, load the syscall number, return ``SECCOMP_RET_ERRNO | 0``
(success, nothing done) for the listed calls, allow everything else.  It is
installed right before ``execve``, after ``PR_SET_NO_NEW_PRIVS``, and
inherited by everything the payload starts.
"""

from __future__ import annotations

import ctypes
import os

from yurt import syscalls as sc

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000

BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_RET_K = 0x06
OFFSET_NR = 0  # struct seccomp_data: int nr; __u32 arch; ...
OFFSET_ARCH = 4

# Per architecture: the AUDIT_ARCH value and the numbers of the calls to fake.
_FAKED = {
    "x86_64": (0xC000003E, {
        "chown": 92, "fchown": 93, "lchown": 94, "fchownat": 260, "mknod": 133, "mknodat": 259,
        "setuid": 105, "setgid": 106, "setreuid": 113, "setregid": 114, "setgroups": 116,
        "setresuid": 117, "setresgid": 119, "setfsuid": 122, "setfsgid": 123,
    }),
    "aarch64": (0xC00000B7, {
        "fchownat": 54, "fchown": 55, "mknodat": 33, "setregid": 143, "setgid": 144, "setreuid": 145,
        "setuid": 146, "setresuid": 147, "setresgid": 149, "setfsuid": 151, "setfsgid": 152, "setgroups": 159,
    }),
}


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def supported() -> bool:
    return os.uname().machine in _FAKED


def program(machine: str | None = None) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k) instructions; plain data, so it can be unit-tested."""
    arch, calls = _FAKED[machine or os.uname().machine]
    numbers = sorted(set(calls.values()))
    n = len(numbers)
    insns = [(BPF_LD_W_ABS, 0, 0, OFFSET_ARCH),
             # another architecture (e.g. a 32-bit binary): leave it alone
             (BPF_JEQ_K, 0, n + 1, arch),
             (BPF_LD_W_ABS, 0, 0, OFFSET_NR)]
    for i, nr in enumerate(numbers):
        # match: jump to the "fake success" return after the remaining tests and the allow
        insns.append((BPF_JEQ_K, n - i, 0, nr))
    insns.append((BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    insns.append((BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | 0))
    return insns


def install_fake_ownership() -> None:
    """Install the filter in this process (NO_NEW_PRIVS must already be set)."""
    insns = program()
    array = (_SockFilter * len(insns))(*[_SockFilter(*i) for i in insns])
    prog = _SockFprog(len(insns), ctypes.cast(array, ctypes.POINTER(_SockFilter)))
    ret = sc._libc.prctl(ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(SECCOMP_MODE_FILTER),
                         ctypes.byref(prog), ctypes.c_ulong(0), ctypes.c_ulong(0))
    sc._check(ret, "prctl(PR_SET_SECCOMP)")
