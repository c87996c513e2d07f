"""Just enough ELF to follow shared-library dependencies: DT_NEEDED, DT_SONAME, DT_RUNPATH/DT_RPATH.

``--mpi=host`` must bind the host MPI library *and what it needs* into the
container.  ``ldd`` would run the host's loader on the file (it executes code
for some inputs, and is slow per file); ``pyelftools`` is a heavy dependency
for four table entries.  This reads the program headers, finds ``PT_DYNAMIC``
and the string table through the ``PT_LOAD`` segments, and stops there.
32/64-bit and either byte order; anything malformed gives an empty answer
rather than an exception, so one odd plug-in cannot break a container start.
"""

from __future__ import annotations

import struct

from yurt.record import Record

PT_LOAD, PT_DYNAMIC = 1, 2
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_SONAME, DT_RPATH, DT_RUNPATH = 0, 1, 5, 10, 14, 15, 29
MAX_HEADERS = 512
MAX_DYNAMIC = 4096


class DynamicInfo(Record):
    __slots__ = ("needed", "soname", "runpath", "machine")
    _defaults = {"needed": list, "soname": None, "runpath": list, "machine": 0}
    needed: list[str]
    soname: str | None
    runpath: list[str]  # DT_RUNPATH, or DT_RPATH when there is no RUNPATH; $ORIGIN not expanded
    machine: int  # e_machine (62 = x86-64)


def read_dynamic(path: str) -> DynamicInfo | None:
    """The dynamic section of the ELF file at ``path``; None when it is not a dynamic ELF object."""
    try:
        with open(path, "rb") as f:
            return _parse(f)
    except (OSError, struct.error, ValueError, IndexError):
        return None


def _parse(f) -> DynamicInfo | None:
    ident = f.read(16)
    if len(ident) < 16 or ident[:4] != b"\x7fELF" or ident[4] not in (1, 2) or ident[5] not in (1, 2):
        return None
    is64, end = ident[4] == 2, "<" if ident[5] == 1 else ">"
    if is64:
        _type, machine, _v, _entry, phoff, _sh, _fl, _eh, phentsize, phnum = struct.unpack(
            end + "HHIQQQIHHH", f.read(42))
        ph_fmt, dyn_fmt = end + "IIQQQQQQ", end + "qQ"
    else:
        _type, machine, _v, _entry, phoff, _sh, _fl, _eh, phentsize, phnum = struct.unpack(
            end + "HHIIIIIHHH", f.read(26))
        ph_fmt, dyn_fmt = end + "IIIIIIII", end + "iI"
    if phnum > MAX_HEADERS or phentsize < struct.calcsize(ph_fmt):
        return None
    loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
    dynamic: tuple[int, int] | None = None
    for i in range(phnum):
        f.seek(phoff + i * phentsize)
        raw = struct.unpack(ph_fmt, f.read(struct.calcsize(ph_fmt)))
        if is64:
            p_type, _flags, offset, vaddr, _paddr, filesz = raw[:6]
        else:
            p_type, offset, vaddr, _paddr, filesz = raw[:5]
        if p_type == PT_LOAD:
            loads.append((vaddr, offset, filesz))
        elif p_type == PT_DYNAMIC:
            dynamic = (offset, filesz)
    if dynamic is None:
        return None
    size = struct.calcsize(dyn_fmt)
    f.seek(dynamic[0])
    data = f.read(min(dynamic[1], MAX_DYNAMIC * size))
    entries: list[tuple[int, int]] = []
    for i in range(len(data) // size):
        tag, val = struct.unpack_from(dyn_fmt, data, i * size)
        if tag == DT_NULL:
            break
        entries.append((tag, val))
    strtab = next((v for t, v in entries if t == DT_STRTAB), None)
    strsz = next((v for t, v in entries if t == DT_STRSZ), 0)
    if strtab is None:
        return None
    str_off = _file_offset(strtab, loads)
    if str_off is None:
        return None
    f.seek(str_off)
    table = f.read(min(strsz, 1 << 20))

    def string(off: int) -> str:
        stop = table.find(b"\0", off)
        return table[off: stop if stop >= 0 else len(table)].decode("utf-8", "replace")

    info = DynamicInfo(machine=machine)
    rpath: list[str] = []
    for tag, val in entries:
        if tag == DT_NEEDED:
            info.needed.append(string(val))
        elif tag == DT_SONAME:
            info.soname = string(val)
        elif tag == DT_RUNPATH:
            info.runpath = [p for p in string(val).split(":") if p]
        elif tag == DT_RPATH:
            rpath = [p for p in string(val).split(":") if p]
    if not info.runpath:
        info.runpath = rpath
    return info


def _file_offset(vaddr: int, loads: list[tuple[int, int, int]]) -> int | None:
    for start, offset, filesz in loads:
        if start <= vaddr < start + filesz:
            return offset + (vaddr - start)
    return None
