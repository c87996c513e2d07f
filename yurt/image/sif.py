"""Read and write SIF (Singularity Image Format) files, byte-compatible with Apptainer.

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
treats every number in the file as hostile until checked against the file size.
"""

from __future__ import annotations

import os
import stat
import struct
import sys
import time
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


# --- writing ----------------------------------------------------------------------------


class SifObject(Record):
    """A data object to write: in-memory bytes, or a path whose content is streamed."""

    __slots__ = ("data_type", "data", "name", "group_id", "linked_id", "fs_type", "part_type", "arch", "extra",
                 "alignment")
    _defaults = {"name": "", "group_id": DEFAULT_GROUP, "linked_id": 0, "fs_type": None, "part_type": None,
                 "arch": None, "extra": b"", "alignment": None}
    data_type: DataType | int
    data: bytes | str | os.PathLike[str]
    name: str
    group_id: int  # 0 = no group (OptNoGroup)
    linked_id: int  # raw: object id, or group id | DESCRIPTOR_GROUP_MASK
    fs_type: FsType | int | None  # partitions; default SQUASH
    part_type: PartType | int | None  # partitions; default PRIM_SYS
    arch: str | None  # partitions; Go name or code; default write_sif(arch=) or host
    extra: bytes
    alignment: int | None  # default: 4096 for partitions, none otherwise


def sif_timestamp(created_at: int | None = None) -> int:
    """created_at, else SOURCE_DATE_EPOCH (reproducible builds), else now."""
    if created_at is not None:
        return int(created_at)
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        try:
            return int(epoch)
        except ValueError:
            raise ImageError(f"SOURCE_DATE_EPOCH={epoch!r} is not an integer")
    return int(time.time())


def _random_uuid4() -> bytes:
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    return bytes(b)


def _fixed(raw: bytes, size: int, what: str) -> bytes:
    if len(raw) > size:
        raise ImageError(f"SIF {what} is {len(raw)} bytes, the format allows {size}")
    return raw.ljust(size, b"\x00")


class _Planned:
    """An object with its source opened and its descriptor fields computed."""

    def __init__(self, index: int, obj: SifObject, default_arch: str):
        self.obj = obj
        self.default_arch = default_arch
        self.index = index
        self.fd: int | None = None
        self.regular = True
        if isinstance(obj.data, bytes | bytearray | memoryview):
            self.size = len(obj.data)
        else:
            src = os.fspath(obj.data)
            try:
                self.fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise ImageError(f"cannot read SIF object data {src}: {e.strerror}")
            st = os.fstat(self.fd)
            self.size = st.st_size
            self.regular = stat.S_ISREG(st.st_mode)
        self.extra = obj.extra
        self.offset = 0
        self.size_with_padding = 0

    def validate(self) -> None:
        """Compute partition metadata and check limits (the source is closed by write_sif)."""
        obj = self.obj
        if not self.regular:
            raise ImageError(f"SIF object data {os.fspath(obj.data)} is not a regular file")
        self.arch: str | None = None
        self.is_primary = False
        if obj.data_type == DataType.PARTITION:
            if obj.extra:  # caller-encoded partition metadata wins over the keyword fields
                _fs, part, raw_arch = _PARTITION_EXTRA.unpack_from(obj.extra.ljust(EXTRA_LEN, b"\x00"))
                self.arch = _cstr(raw_arch)
            else:
                self.arch = arch_code(obj.arch) if obj.arch else self.default_arch
                fs = FsType.SQUASH if obj.fs_type is None else obj.fs_type
                part = PartType.PRIM_SYS if obj.part_type is None else obj.part_type
                try:
                    self.extra = _PARTITION_EXTRA.pack(fs, part, self.arch.encode())
                except struct.error:
                    raise ImageError(f"SIF partition types out of range: fs {fs}, part {part}")
            if self.arch == ARCH_UNKNOWN:  # OptPartitionMetadata refuses it too
                raise ImageError("cannot write a partition with an unknown architecture", "pass arch=")
            self.is_primary = part == PartType.PRIM_SYS
        default_align = PARTITION_ALIGNMENT if obj.data_type == DataType.PARTITION else 0
        self.alignment = default_align if obj.alignment is None else obj.alignment
        if self.alignment < 0 or (self.alignment & (self.alignment - 1)):
            raise ImageError(f"SIF object alignment {self.alignment} is not a power of two")
        self.name = _fixed(obj.name.encode(), NAME_LEN, f"object name {obj.name!r}")
        _fixed(self.extra, EXTRA_LEN, "descriptor extra data")
        if not 0 <= obj.group_id < DESCRIPTOR_GROUP_MASK:
            raise ImageError(f"SIF group id {obj.group_id} out of range")
        if not 0 <= obj.linked_id < 1 << 32 or not -(1 << 31) <= int(obj.data_type) < 1 << 31:
            raise ImageError(f"SIF object type {obj.data_type} or link {obj.linked_id} out of range")

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _next_aligned(offset: int, alignment: int) -> int:
    """create.go nextAligned: round up to a power-of-two alignment (0 = unaligned)."""
    if alignment and offset % alignment:
        offset = (offset & ~(alignment - 1)) + alignment
    return offset


def _copy_stream(src_fd: int, dst_fd: int, size: int, hasher: object | None) -> None:
    """Stream ``size`` bytes (multi-GB partitions) without holding them in memory."""
    remaining = size
    if hasher is None and hasattr(os, "copy_file_range"):
        try:
            src_off = 0
            while remaining:
                n = os.copy_file_range(src_fd, dst_fd, min(remaining, 1 << 30), src_off)
                if n == 0:
                    break
                remaining -= n
                src_off += n
        except OSError:
            # Unsupported between these file systems: restart the plain copy from where we are.
            pass
        if remaining == 0:
            return
        done = size - remaining
        os.lseek(src_fd, done, os.SEEK_SET)
    else:
        os.lseek(src_fd, 0, os.SEEK_SET)
    while remaining:
        chunk = os.read(src_fd, min(remaining, 1 << 20))
        if not chunk:
            break
        if hasher is not None:
            hasher.update(chunk)  # type: ignore[attr-defined]
        _write_all(dst_fd, chunk)
        remaining -= len(chunk)
    if remaining:
        raise ImageError("SIF object source file shrank while it was being copied")


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_sif(
    out_path: str | os.PathLike[str],
    objects: list[SifObject],
    *,
    arch: str | None = None,
    created_at: int | None = None,
    deterministic_id: bool = False,
) -> None:
    """Write a new SIF atomically, laid out exactly as sif/v2 ``CreateContainer`` does.

    ``deterministic_id`` writes the all-zero ID like Go's ``OptCreateDeterministic``; it is
    implied by SOURCE_DATE_EPOCH so that a reproducible build is byte-for-byte reproducible.
    The result appears at ``out_path`` only when complete (temp file, fsync, rename).
    """
    out_path = os.fspath(out_path)
    if len(objects) > DEFAULT_CAPACITY:
        raise ImageError(f"a SIF holds at most {DEFAULT_CAPACITY} objects, got {len(objects)}")
    timestamp = sif_timestamp(created_at)
    if not -(1 << 63) <= timestamp < 1 << 63:
        raise ImageError(f"SIF timestamp {timestamp} does not fit in 64 bits")
    if deterministic_id or os.environ.get("SOURCE_DATE_EPOCH"):
        ident = bytes(16)
    else:
        ident = _random_uuid4()
    default_arch = arch_code(arch) if arch else host_arch_code()

    planned: list[_Planned] = []
    directory = os.path.dirname(os.path.abspath(out_path))
    tmp = os.path.join(directory, f".{os.path.basename(out_path)}.tmp-{os.urandom(6).hex()}")
    out_fd: int | None = None
    try:
        for i, obj in enumerate(objects):
            planned.append(_Planned(i, obj, default_arch))
            planned[-1].validate()
        primaries = [p for p in planned if p.is_primary]
        if len(primaries) > 1:
            raise ImageError("a SIF may contain only one primary system partition")
        header_arch = primaries[0].arch if primaries else ARCH_UNKNOWN
        try:
            out_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o755)
        except OSError as e:
            raise ImageError(f"cannot create {out_path}: {e.strerror}")
        table_size = DEFAULT_CAPACITY * DESCRIPTOR_SIZE
        data_offset = DESCRIPTORS_OFFSET + table_size
        data_size = 0
        for p in planned:
            unaligned = data_offset + data_size
            p.offset = _next_aligned(unaligned, p.alignment)
            p.size_with_padding = p.offset - unaligned + p.size
            data_size += p.size_with_padding
            _write_object(out_fd, p)
        table = bytearray(table_size)
        for p in planned:
            _DESCRIPTOR.pack_into(
                table, p.index * DESCRIPTOR_SIZE,
                p.obj.data_type, True, p.index + 1, p.obj.group_id | DESCRIPTOR_GROUP_MASK,
                p.obj.linked_id, p.offset, p.size, p.size_with_padding,
                timestamp, timestamp, 0, 0, p.name, _fixed(p.extra, EXTRA_LEN, "extra"),
            )
        header = _HEADER.pack(
            _fixed(LAUNCH_SCRIPT, 32, "launch script"), MAGIC, _fixed(CURRENT_VERSION.encode(), 3, "version"),
            _fixed(header_arch.encode(), 3, "arch"), ident, timestamp, timestamp,
            DEFAULT_CAPACITY - len(planned), DEFAULT_CAPACITY, DESCRIPTORS_OFFSET, table_size,
            data_offset, data_size,
        )
        os.pwrite(out_fd, header.ljust(DESCRIPTORS_OFFSET, b"\x00"), 0)
        os.pwrite(out_fd, bytes(table), DESCRIPTORS_OFFSET)
        os.ftruncate(out_fd, data_offset + data_size)  # no objects: the file ends after the table
        os.fsync(out_fd)
        os.close(out_fd)
        out_fd = None
        os.rename(tmp, out_path)
        from yurt.store.atomic import fsync_path  # lazily: SifFile.open is on the exec path

        fsync_path(directory)
    except BaseException as e:
        if out_fd is not None:
            os.close(out_fd)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise ImageError(f"cannot write {out_path}: {e.strerror or e}")
        raise
    finally:
        for p in planned:
            p.close()


def _write_object(out_fd: int, p: _Planned) -> None:
    """Write one object's bytes at its offset; OCI blobs get their digest as Go records it."""
    hasher = None
    if p.obj.data_type in (DataType.OCI_ROOT_INDEX, DataType.OCI_BLOB) and not p.obj.extra:
        import hashlib

        hasher = hashlib.sha256()
    os.lseek(out_fd, p.offset, os.SEEK_SET)
    if p.fd is None:
        data = p.obj.data
        assert isinstance(data, bytes | bytearray | memoryview)
        if hasher is not None:
            hasher.update(data)
        _write_all(out_fd, data)
    else:
        _copy_stream(p.fd, out_fd, p.size, hasher)
        os.lseek(out_fd, p.offset + p.size, os.SEEK_SET)
    if hasher is not None:
        # descriptor.go ociBlob.MarshalBinary: the digest text, "sha256:<hex>".
        p.extra = f"sha256:{hasher.hexdigest()}".encode()
