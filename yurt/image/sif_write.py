"""Write SIF files, laid out byte for byte as Apptainer's ``sif/v2`` ``CreateContainer`` does.

The format itself (header and descriptor structs, constants, architecture codes) and reading
live in :mod:`yurt.image.sif`; writing is separate because it is never on the ``yurt exec``
path (only ``build``, ``pull`` and conversions write images), and it needs more: streaming
multi-gigabyte partitions (``copy_file_range``), digests of OCI blobs, timestamps and the
atomic temp + fsync + rename.
"""

from __future__ import annotations

import os
import stat
import struct
import time

from yurt.errors import ImageError
from yurt.image.sif import (
    _DESCRIPTOR,
    _HEADER,
    _PARTITION_EXTRA,
    ARCH_UNKNOWN,
    CURRENT_VERSION,
    DEFAULT_CAPACITY,
    DEFAULT_GROUP,
    DESCRIPTOR_GROUP_MASK,
    DESCRIPTOR_SIZE,
    DESCRIPTORS_OFFSET,
    EXTRA_LEN,
    LAUNCH_SCRIPT,
    MAGIC,
    NAME_LEN,
    PARTITION_ALIGNMENT,
    DataType,
    FsType,
    PartType,
    _cstr,
    arch_code,
    host_arch_code,
)
from yurt.record import Record


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
