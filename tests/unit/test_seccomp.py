"""The fake-ownership BPF program, checked by interpreting it (no kernel needed)."""

from __future__ import annotations

import pytest

from yurt.runtime import seccomp


def run(program, arch: int, nr: int) -> int:
    """A tiny classic-BPF interpreter for the three opcodes the program uses."""
    pc, acc = 0, 0
    data = {seccomp.OFFSET_NR: nr, seccomp.OFFSET_ARCH: arch}
    while True:
        code, jt, jf, k = program[pc]
        if code == seccomp.BPF_LD_W_ABS:
            acc = data[k]
            pc += 1
        elif code == seccomp.BPF_JEQ_K:
            pc += 1 + (jt if acc == k else jf)
        elif code == seccomp.BPF_RET_K:
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


@pytest.mark.parametrize("machine", sorted(seccomp._FAKED))
def test_faked_calls_return_success_others_are_allowed(machine):
    arch, calls = seccomp._FAKED[machine]
    prog = seccomp.program(machine)
    for nr in calls.values():
        assert run(prog, arch, nr) == seccomp.SECCOMP_RET_ERRNO | 0
    faked = set(calls.values())
    for nr in range(0, 450):
        if nr not in faked:
            assert run(prog, arch, nr) == seccomp.SECCOMP_RET_ALLOW, nr
    # another architecture (a 32-bit binary, say) is left alone
    assert run(prog, 0x40000003, next(iter(faked))) == seccomp.SECCOMP_RET_ALLOW
