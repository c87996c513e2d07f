"""The SIF (Singularity Image Format) layout, and reading SIF files, byte-compatible with Apptainer.

The layout follows the Go module ``github.com/apptainer/sif/v2`` (``pkg/sif/sif.go``,
``descriptor.go``, ``create.go``, ``descriptor_input.go``, ``arch.go``):

* a 128-byte global header at offset 0 (``header`` in sif.go),
* a descriptor table of fixed-size 585-byte records (``rawDescriptor`` in descriptor.go),
  by default 48 slots at offset 4096 (``CreateContainer`` in create.go),
* data objects appended right after the table; partitions aligned to 4096 bytes
  (``NewDescriptorInput``), everything else unaligned.

All integers are little-endian and packed without padding, as Go's ``encoding/binary`` writes
them.  Opening a SIF is on the ``yurt exec`` hot path, so this module imports only cheap
standard-library modules at load time, reads just the header and the descriptor table, and
treats every number in the file as hostile until checked against the file size.  Writing
(:func:`yurt.image.sif_write.write_sif`) is in its own module, off that path.
"""

from __future__ import annotations

import os
import stat
import struct
import sys
from enum import IntEnum

from yurt.errors import ImageError
from yurt.record import Record

# --- layout constants (sif.go, create.go) -------------------------------------------------

LAUNCH_SCRIPT = b"#!/usr/bin/env run-singularity\n"  # set by Apptainer's assemblers/sif.go
MAGIC = b"SIF_MAGIC\x00"  # hdrMagic
MAGIC_OFFSET = 32  # after the 32-byte launch script
CURRENT_VERSION = "01"  # CurrentVersion (version01), "%02d"
DESCRIPTOR_GROUP_MASK = 0xF0000000  # descrGroupMask: raw group ids carry this bit
DEFAULT_GROUP = 1  # DefaultObjectGroup
DEFAULT_CAPACITY = 48  # CreateContainer: descriptorCapacity
DESCRIPTORS_OFFSET = 4096  # CreateContainer: descriptorsOffset
PARTITION_ALIGNMENT = 4096  # NewDescriptorInput: DataPartition alignment
NAME_LEN = 128  # descrNameLen
EXTRA_LEN = 384  # descrMaxPrivLen

# header: LaunchScript[32] Magic[10] Version[3] Arch[3] ID[16] then 8 x int64
_HEADER = struct.Struct("<32s10s3s3s16s8q")
# rawDescriptor: DataType int32, Used bool, ID/GroupID/LinkedID uint32, 7 x int64, Name, Extra
_DESCRIPTOR = struct.Struct("<i?III7q128s384s")
_PARTITION_EXTRA = struct.Struct("<ii3s")  # partition{Fstype, Parttype, Arch}
HEADER_SIZE = _HEADER.size  # 128
DESCRIPTOR_SIZE = _DESCRIPTOR.size  # 585

# Hostile-input bounds: far above anything Apptainer or yurt writes, small enough that the
# table read on open stays cheap.
MAX_DESCRIPTORS = 4096
DEFAULT_READ_LIMIT = 16 * 1024 * 1024


class DataType(IntEnum):
    """SIF data object types (``DataType``, iota + 0x4001 in sif.go)."""

    DEFFILE = 0x4001
    ENVVAR = 0x4002
    LABELS = 0x4003
    PARTITION = 0x4004
    SIGNATURE = 0x4005
    GENERIC_JSON = 0x4006
    GENERIC = 0x4007
    CRYPTO_MESSAGE = 0x4008
    SBOM = 0x4009
    OCI_ROOT_INDEX = 0x400A
    OCI_BLOB = 0x400B


# DataType.String() in sif.go, so `yurt inspect` prints what `siftool list` prints.
DATA_TYPE_NAMES = {
    DataType.DEFFILE: "Def.FILE",
    DataType.ENVVAR: "Env.Vars",
    DataType.LABELS: "JSON.Labels",
    DataType.PARTITION: "FS",
    DataType.SIGNATURE: "Signature",
    DataType.GENERIC_JSON: "JSON.Generic",
    DataType.GENERIC: "Generic/Raw",
    DataType.CRYPTO_MESSAGE: "Cryptographic Message",
    DataType.SBOM: "SBOM",
    DataType.OCI_ROOT_INDEX: "OCI.RootIndex",
    DataType.OCI_BLOB: "OCI.Blob",
}


class FsType(IntEnum):
    """Partition file system types (``FSType``, iota + 1 in sif.go)."""

    SQUASH = 1
    EXT3 = 2
    IMMUOBJ = 3
    RAW = 4
    ENCRYPTED_SQUASHFS = 5
    GOCRYPTFS_SQUASHFS = 6


class PartType(IntEnum):
    """Partition roles (``PartType``, iota + 1 in sif.go); PRIM_SYS is the container rootfs."""

    SYSTEM = 1
    PRIM_SYS = 2
    DATA = 3
    OVERLAY = 4


# arch.go: Go architecture name -> 2-digit code stored as 3 bytes ("02\0").
# loong64 ("13") is newer than the arch.go revisions we could read; it follows the
# reference study (/work/shared/reference/apptainer.md section 3.1).
ARCH_CODES = {
    "386": "01",
    "amd64": "02",
    "arm": "03",
    "arm64": "04",
    "ppc64": "05",
    "ppc64le": "06",
    "mips": "07",
    "mipsle": "08",
    "mips64": "09",
    "mips64le": "10",
    "s390x": "11",
    "riscv64": "12",
    "loong64": "13",
}
ARCH_NAMES = {code: name for name, code in ARCH_CODES.items()}
ARCH_UNKNOWN = "00"

# uname -m -> Go GOARCH, for host_arch_code().
_MACHINE_TO_GOARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "i386": "386",
    "i486": "386",
    "i586": "386",
    "i686": "386",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv6l": "arm",
    "armv7l": "arm",
    "armv8l": "arm",
    "ppc64": "ppc64",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "loongarch64": "loong64",
}


def host_arch_code() -> str:
    """The SIF arch code of this machine, so builds are stamped for where they can run.

    ``os.uname().machine`` is what ``platform.machine()`` returns on Linux, without importing
    ``platform``.  MIPS endianness is not in the machine name, so it comes from the byte order.
    """
    machine = os.uname().machine
    goarch = _MACHINE_TO_GOARCH.get(machine)
    if goarch is None and machine.startswith("mips"):
        goarch = "mips64" if "64" in machine else "mips"
        if sys.byteorder == "little":
            goarch += "le"
    return ARCH_CODES.get(goarch or "", ARCH_UNKNOWN)


def arch_code(arch: str) -> str:
    """Normalise a Go arch name ("amd64") or a SIF code ("02") to the SIF code."""
    if arch in ARCH_NAMES:
        return arch
    code = ARCH_CODES.get(arch)
    if code is None:
        known = ", ".join(sorted(ARCH_CODES))
        raise ImageError(f"unknown SIF architecture {arch!r}", f"use one of: {known}")
    return code


def _enum_or_int(enum: type[IntEnum], value: int) -> IntEnum | int:
    """Map known values to the enum but keep unknown ones: newer SIFs may use them."""
    try:
        return enum(value)
    except ValueError:
        return value


def _cstr(raw: bytes) -> str:
    """Decode a NUL-padded fixed-size field the way Go's TrimRight("\\x00") does."""
    return raw.rstrip(b"\x00").decode("utf-8", "replace")


# --- parsed structures ------------------------------------------------------------------


class Header(Record):
    """The SIF global header (``header`` in sif.go)."""

    __slots__ = ("launch_script", "version", "arch", "id", "created_at", "modified_at", "descriptors_free",
                 "descriptors_total", "descriptors_offset", "descriptors_size", "data_offset", "data_size")

    launch_script: str
    version: str
    arch: str  # SIF code, e.g. "02"
    id: bytes  # 16 raw UUID bytes
    created_at: int
    modified_at: int
    descriptors_free: int
    descriptors_total: int
    descriptors_offset: int
    descriptors_size: int
    data_offset: int
    data_size: int

    @property
    def arch_name(self) -> str:
        """Go architecture name ("amd64"), "unknown" like Go's GoArch() otherwise."""
        return ARCH_NAMES.get(self.arch, "unknown")

    @property
    def uuid(self) -> str:
        """The ID in canonical 8-4-4-4-12 form, as ``FileImage.ID()`` prints it."""
        h = self.id.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Descriptor(Record):
    """One data object descriptor (``rawDescriptor`` in descriptor.go).

    ``group_id`` is the plain group number (0 = no group); on disk it carries
    ``DESCRIPTOR_GROUP_MASK``.  ``linked_id`` is the raw link: an object id, or a group id
    with the mask bit set (see ``links_group``).
    """

    __slots__ = ("data_type", "used", "id", "group_id", "linked_id", "offset", "size", "size_with_padding",
                 "created_at", "modified_at", "uid", "gid", "name", "extra")
    data_type: DataType | int
    used: bool
    id: int
    group_id: int
    linked_id: int
    offset: int
    size: int
    size_with_padding: int
    created_at: int
    modified_at: int
    uid: int
    gid: int
    name: str
    extra: bytes

    @property
    def type_name(self) -> str:
        """Human-readable type as Go's DataType.String() gives it."""
        return DATA_TYPE_NAMES.get(self.data_type, "Unknown")  # type: ignore[call-overload]

    @property
    def links_group(self) -> bool:
        """True when ``linked_id`` names an object group rather than one object."""
        return self.linked_id & DESCRIPTOR_GROUP_MASK == DESCRIPTOR_GROUP_MASK

    @property
    def linked_target(self) -> int:
        """The linked object or group number without the mask bit (0 = no link)."""
        return self.linked_id & ~DESCRIPTOR_GROUP_MASK

    def _partition(self) -> tuple[int, int, bytes] | None:
        if self.data_type != DataType.PARTITION:
            return None
        return _PARTITION_EXTRA.unpack_from(self.extra)

    @property
    def fs_type(self) -> FsType | int | None:
        """File system of a partition (None for other objects)."""
        p = self._partition()
        return None if p is None else _enum_or_int(FsType, p[0])

    @property
    def part_type(self) -> PartType | int | None:
        """Role of a partition (None for other objects)."""
        p = self._partition()
        return None if p is None else _enum_or_int(PartType, p[1])

    @property
    def part_arch(self) -> str | None:
        """SIF arch code of a partition, e.g. "02" (None for other objects)."""
        p = self._partition()
        return None if p is None else _cstr(p[2])


def _parse_header(raw: bytes) -> Header:
    (launch, _magic, version, arch, ident, *nums) = _HEADER.unpack(raw)
    return Header(_cstr(launch), _cstr(version), _cstr(arch), ident, *nums)


def _parse_descriptor(raw: bytes) -> Descriptor:
    (dtype, used, ident, group, link, *nums, name, extra) = _DESCRIPTOR.unpack(raw)
    return Descriptor(
        _enum_or_int(DataType, dtype), bool(used), ident, group & ~DESCRIPTOR_GROUP_MASK, link,
        *nums, _cstr(name), extra,
    )


def _pread_exact(fd: int, size: int, offset: int, what: str, path: str) -> bytes:
    """Read exactly ``size`` bytes or fail with a one-line ImageError (never a short read)."""
    chunks = []
    while size > 0:
        chunk = os.pread(fd, min(size, 1 << 20), offset)
        if not chunk:
            raise ImageError(f"{path}: truncated SIF file: {what} ends past end of file")
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


class SifFile:
    """An opened SIF: header and used descriptors parsed, data read on demand.

    The file descriptor stays open (close-on-exec) so later reads see the same file that was
    validated, even if the path is replaced meanwhile.
    """

    def __init__(self, path: str, fd: int, size: int, header: Header, descriptors: list[Descriptor]):
        self.path = path
        self._fd: int | None = fd
        self.size = size
        self.header = header
        self.descriptors = descriptors

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> SifFile:
        """Open and validate a SIF; raises ImageError for anything malformed."""
        path = os.fspath(path)
        try:
            # O_NONBLOCK: a FIFO given as image path must not hang us (no effect on files).
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:
            raise ImageError(f"cannot open image {path}: {e.strerror}")
        try:
            return cls._load(path, fd)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def from_fd(cls, path: str, fd: int) -> SifFile:
        """Validate the SIF already open as ``fd`` (``path`` names it in messages); the SifFile reads and
        closes a duplicate, ``fd`` stays the caller's."""
        dup = os.dup(fd)
        try:
            return cls._load(path, dup)
        except BaseException:
            os.close(dup)
            raise

    @classmethod
    def _load(cls, path: str, fd: int) -> SifFile:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(f"{path}: not a regular file, so not a SIF image")
        size = st.st_size
        if size < HEADER_SIZE:
            raise ImageError(f"{path}: truncated SIF file ({size} bytes, header needs {HEADER_SIZE})")
        raw = _pread_exact(fd, HEADER_SIZE, 0, "header", path)
        if raw[MAGIC_OFFSET:MAGIC_OFFSET + len(MAGIC)] != MAGIC:
            raise ImageError(f"{path}: not a SIF image (no SIF_MAGIC)")
        header = _parse_header(raw)
        # load.go: a version newer than ours may change the layout.
        if not (header.version.isascii() and header.version.isdigit()) or int(header.version) > int(CURRENT_VERSION):
            raise ImageError(
                f"{path}: unsupported SIF version {header.version!r}", f"yurt reads up to {CURRENT_VERSION}"
            )
        total, offset = header.descriptors_total, header.descriptors_offset
        if not 0 <= total <= MAX_DESCRIPTORS:
            raise ImageError(f"{path}: corrupt SIF header: {total} descriptors (limit {MAX_DESCRIPTORS})")
        table_size = total * DESCRIPTOR_SIZE
        if offset < HEADER_SIZE or offset + table_size > size:
            raise ImageError(
                f"{path}: corrupt SIF header: descriptor table at {offset}+{table_size} "
                f"is outside the {size}-byte file"
            )
        table = _pread_exact(fd, table_size, offset, "descriptor table", path)
        descriptors = []
        for i in range(total):
            d = _parse_descriptor(table[i * DESCRIPTOR_SIZE:(i + 1) * DESCRIPTOR_SIZE])
            if not d.used:
                continue
            if d.offset < 0 or d.size < 0 or d.offset + d.size > size:
                raise ImageError(
                    f"{path}: corrupt SIF: object {d.id} ({d.type_name}) at {d.offset}+{d.size} "
                    f"is outside the {size}-byte file"
                )
            descriptors.append(d)
        return cls(path, fd, size, header, descriptors)

    # -- lookups -----------------------------------------------------------------------

    def find(self, data_type: DataType | int, name: str | None = None) -> list[Descriptor]:
        """Used descriptors of one type (and name, if given), in table order."""
        return [d for d in self.descriptors if d.data_type == data_type and (name is None or d.name == name)]

    def primary_partition(self) -> Descriptor:
        """The PrimSys partition, i.e. the container root file system."""
        found = [d for d in self.find(DataType.PARTITION) if d.part_type == PartType.PRIM_SYS]
        if not found:
            raise ImageError(f"{self.path}: SIF has no primary system partition", "the image holds no rootfs")
        if len(found) > 1:
            raise ImageError(f"{self.path}: corrupt SIF: {len(found)} primary system partitions")
        return found[0]

    def read_object(self, desc: Descriptor, limit: int = DEFAULT_READ_LIMIT) -> bytes:
        """Read one object into memory, refusing objects over ``limit`` (stream big ones)."""
        if desc.size > limit:
            raise ImageError(
                f"{self.path}: object {desc.id} ({desc.type_name}) is {desc.size} bytes, over the "
                f"{limit}-byte limit for reading into memory"
            )
        return _pread_exact(self._require_fd(), desc.size, desc.offset, f"object {desc.id}", self.path)

    def fileno(self) -> int:
        """The open descriptor, e.g. to hand ``/proc/self/fd/N`` plus an offset to a mounter."""
        return self._require_fd()

    def _require_fd(self) -> int:
        if self._fd is None:
            raise ValueError("SifFile is closed")
        return self._fd

    def close(self) -> None:
        """Release the file descriptor (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> SifFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def is_sif(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` starts like a SIF (magic at offset 32); never raises."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        return os.pread(fd, len(MAGIC), MAGIC_OFFSET) == MAGIC
    except OSError:
        return False
    finally:
        os.close(fd)
