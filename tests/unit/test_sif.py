"""SIF reader/writer against test vectors built from the published Go source.

The vectors below are assembled field by field at the byte offsets implied by the Go structs
of github.com/apptainer/sif/v2 (encoding/binary, little-endian, packed):

* pkg/sif/sif.go ``header``: LaunchScript[32] @0, Magic[10] @32, Version[3] @42, Arch[3] @45,
  ID uuid[16] @48, then int64 CreatedAt @64, ModifiedAt @72, DescriptorsFree @80,
  DescriptorsTotal @88, DescriptorsOffset @96, DescriptorsSize @104, DataOffset @112,
  DataSize @120 (128 bytes).
* pkg/sif/descriptor.go ``rawDescriptor``: DataType int32 @0, Used bool @4, ID uint32 @5,
  GroupID uint32 @9, LinkedID uint32 @13, Offset int64 @17, Size @25, SizeWithPadding @33,
  CreatedAt @41, ModifiedAt @49, UID @57, GID @65, Name[128] @73, Extra[384] @201 (585 bytes).
* descriptor.go ``partition`` extra: Fstype int32, Parttype int32, Arch [3]byte.
* create.go ``CreateContainer``: descriptorsOffset 4096, capacity 48, DataOffset = 4096 +
  48*585; ``writeDataObjectAt``: SizeWithPadding = offset - unalignedOffset + size.
* descriptor_input.go ``NewDescriptorInput``: partitions aligned to 4096, other objects not;
  ``fillDescriptor``: GroupID = group | 0xf0000000, times = image time.
* sif.go constants: DataDeffile = 0x4001 ... DataOCIBlob = 0x400b, FsSquash = 1, PartPrimSys = 2;
  arch.go: amd64 = "02\\0", arm64 = "04\\0".
"""

from __future__ import annotations

import os
import random
import time

import pytest

from yurt.errors import ImageError
from yurt.image import sif as S
from yurt.image.sif import DataType, FsType, PartType, SifFile, is_sif
from yurt.image.sif_write import SifObject, write_sif

T = 1_700_000_000
LAUNCH = b"#!/usr/bin/env run-singularity\n"


def u32(v: int) -> bytes:
    return v.to_bytes(4, "little")


def i32(v: int) -> bytes:
    return v.to_bytes(4, "little", signed=True)


def i64(v: int) -> bytes:
    return v.to_bytes(8, "little", signed=True)


def put(buf: bytearray, offset: int, data: bytes) -> None:
    buf[offset:offset + len(data)] = data


def header_vector(*, arch: bytes, ident: bytes, ctime: int, free: int, total: int, descr_off: int,
                  descr_size: int, data_off: int, data_size: int, version: bytes = b"01\0",
                  magic: bytes = b"SIF_MAGIC\0") -> bytes:
    h = bytearray(128)
    put(h, 0, LAUNCH)  # LaunchScript[32], NUL padded
    put(h, 32, magic)
    put(h, 42, version)
    put(h, 45, arch)
    put(h, 48, ident)
    for off, val in ((64, ctime), (72, ctime), (80, free), (88, total), (96, descr_off),
                     (104, descr_size), (112, data_off), (120, data_size)):
        put(h, off, i64(val))
    return bytes(h)


def descriptor_vector(*, dtype: int, ident: int, group_raw: int, link: int, offset: int, size: int,
                      padded: int, ctime: int, name: bytes = b"", extra: bytes = b"",
                      used: bool = True) -> bytes:
    d = bytearray(585)
    put(d, 0, i32(dtype))
    put(d, 4, b"\x01" if used else b"\x00")
    put(d, 5, u32(ident))
    put(d, 9, u32(group_raw))
    put(d, 13, u32(link))
    put(d, 17, i64(offset))
    put(d, 25, i64(size))
    put(d, 33, i64(padded))
    put(d, 41, i64(ctime))
    put(d, 49, i64(ctime))
    put(d, 57, i64(0))  # UID (deprecated, always 0)
    put(d, 65, i64(0))  # GID
    put(d, 73, name)
    put(d, 201, extra)
    return bytes(d)


def partition_extra(fs: int, part: int, arch: bytes) -> bytes:
    return i32(fs) + i32(part) + arch


# --- constants -----------------------------------------------------------------------------


def test_constants_match_go_source():
    assert S.HEADER_SIZE == 128 and S.DESCRIPTOR_SIZE == 585
    assert [int(t) for t in DataType] == list(range(0x4001, 0x400C))
    assert DataType.PARTITION == 0x4004 and DataType.OCI_BLOB == 0x400B
    assert (FsType.SQUASH, FsType.EXT3, FsType.ENCRYPTED_SQUASHFS) == (1, 2, 5)
    assert (PartType.SYSTEM, PartType.PRIM_SYS, PartType.DATA, PartType.OVERLAY) == (1, 2, 3, 4)
    assert S.ARCH_CODES["amd64"] == "02" and S.ARCH_CODES["arm64"] == "04"
    assert S.ARCH_CODES["s390x"] == "11" and S.ARCH_CODES["riscv64"] == "12"


@pytest.mark.parametrize(("machine", "code"), [("x86_64", "02"), ("aarch64", "04"), ("ppc64le", "06"),
                                               ("s390x", "11"), ("i686", "01"), ("sparc64", "00")])
def test_host_arch_code(monkeypatch, machine, code):
    class U:
        pass

    u = U()
    u.machine = machine  # type: ignore[attr-defined]
    monkeypatch.setattr(S.os, "uname", lambda: u)
    assert S.host_arch_code() == code


# --- write direction: exact bytes ----------------------------------------------------------

DEF = b"Bootstrap: scratch\n"  # 19 bytes
JS = b'{"a":1}'  # 7 bytes
PART = bytes(range(256)) * 19 + b"tail"  # 4868 bytes


def expected_small_image() -> bytes:
    # Data starts at 4096 + 48*585 = 32176.  Deffile 32176..32195, JSON 32195..32202 (unaligned),
    # the partition is aligned up to 8 * 4096 = 32768: padding 566, SizeWithPadding 566 + 4868.
    data_off, part_off = 32176, 32768
    data_size = 19 + 7 + (part_off - 32202) + len(PART)
    assert data_size == 5460 and len(PART) == 4868
    out = bytearray(header_vector(arch=b"02\0", ident=bytes(16), ctime=T, free=45, total=48, descr_off=4096,
                                  descr_size=28080, data_off=data_off, data_size=data_size))
    out += bytes(4096 - 128)
    out += descriptor_vector(dtype=0x4001, ident=1, group_raw=0xF0000001, link=0, offset=32176, size=19,
                             padded=19, ctime=T)
    out += descriptor_vector(dtype=0x4006, ident=2, group_raw=0xF0000001, link=0, offset=32195, size=7,
                             padded=7, ctime=T, name=b"oci-config.json")
    out += descriptor_vector(dtype=0x4004, ident=3, group_raw=0xF0000001, link=0, offset=part_off,
                             size=len(PART), padded=part_off - 32202 + len(PART), ctime=T,
                             extra=partition_extra(1, 2, b"02\0"))
    out += bytes(45 * 585)  # unused slots are zero
    assert len(out) == 32176
    out += DEF + JS + bytes(part_off - 32202) + PART
    return bytes(out)


def small_objects(part: bytes | str = PART) -> list[SifObject]:
    return [
        SifObject(DataType.DEFFILE, DEF),
        SifObject(DataType.GENERIC_JSON, JS, name="oci-config.json"),
        SifObject(DataType.PARTITION, part, fs_type=FsType.SQUASH, part_type=PartType.PRIM_SYS, arch="amd64"),
    ]


def test_write_matches_go_layout_bytes(tmp_path):
    out = tmp_path / "a.sif"
    write_sif(out, small_objects(), created_at=T, deterministic_id=True)
    assert out.read_bytes() == expected_small_image()
    assert os.stat(out).st_mode & 0o100  # executable through its launch script, like Go's 0o755


def test_write_streams_partition_from_file(tmp_path):
    src = tmp_path / "part.bin"
    src.write_bytes(PART)
    out = tmp_path / "b.sif"
    write_sif(out, small_objects(str(src)), created_at=T, deterministic_id=True)
    assert out.read_bytes() == expected_small_image()


def test_write_empty_image(tmp_path):
    out = tmp_path / "empty.sif"
    write_sif(out, [], created_at=T, deterministic_id=True)
    expected = header_vector(arch=b"00\0", ident=bytes(16), ctime=T, free=48, total=48, descr_off=4096,
                             descr_size=28080, data_off=32176, data_size=0)
    assert out.read_bytes() == expected + bytes(32176 - 128)


def test_source_date_epoch_makes_output_reproducible(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(T))
    write_sif(tmp_path / "1.sif", small_objects())
    write_sif(tmp_path / "2.sif", small_objects())
    assert (tmp_path / "1.sif").read_bytes() == (tmp_path / "2.sif").read_bytes() == expected_small_image()


def test_random_id_is_uuid4_and_time_is_now(tmp_path, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    write_sif(tmp_path / "r.sif", small_objects())
    with SifFile.open(tmp_path / "r.sif") as f:
        assert f.header.id != bytes(16)
        assert f.header.id[6] >> 4 == 4 and f.header.id[8] >> 6 == 2
        assert abs(f.header.created_at - int(time.time())) < 60


def test_group_link_and_alignment_options(tmp_path):
    objs = [
        SifObject(DataType.GENERIC, b"x", group_id=0),
        SifObject(DataType.SIGNATURE, b"sig", group_id=0, linked_id=1 | S.DESCRIPTOR_GROUP_MASK),
        SifObject(DataType.GENERIC, b"y", alignment=512),
    ]
    write_sif(tmp_path / "g.sif", objs, created_at=T, deterministic_id=True)
    raw = (tmp_path / "g.sif").read_bytes()
    d0 = raw[4096:4096 + 585]
    assert d0[9:13] == u32(0xF0000000)  # OptNoGroup still sets the mask bit
    with SifFile.open(tmp_path / "g.sif") as f:
        a, b, c = f.descriptors
        assert a.group_id == 0 and b.links_group and b.linked_target == 1
        assert c.offset % 512 == 0 and c.offset == 32256
        assert f.read_object(c) == b"y"
        assert f.header.arch == "00"


def test_oci_blob_gets_digest_extra(tmp_path):
    import hashlib

    write_sif(tmp_path / "o.sif", [SifObject(DataType.OCI_BLOB, b"blob")], created_at=T)
    with SifFile.open(tmp_path / "o.sif") as f:
        extra = f.descriptors[0].extra
    assert extra.rstrip(b"\0") == b"sha256:" + hashlib.sha256(b"blob").hexdigest().encode()


# --- read direction: a hand-built vector ---------------------------------------------------


def hand_built_image() -> bytes:
    """Three-slot table (one unused) with no-group, group-link and arm64 partition records."""
    ident = bytes.fromhex("b2659d4ebd504ea5bd17eec5e54f918e")
    table_off, slots = 256, 3
    data_off = table_off + slots * 585  # 2011
    labels = b'{"maintainer":"me"}'
    sig = b"SIGNATURE"
    part = b"hsqs" + bytes(96)
    labels_off, sig_off, part_off = data_off, data_off + len(labels), 4096
    head = header_vector(arch=b"04\0", ident=ident, ctime=1504657553, free=0, total=slots,
                         descr_off=table_off, descr_size=slots * 585, data_off=data_off,
                         data_size=part_off + len(part) - data_off)
    img = bytearray(head) + bytes(table_off - 128)
    img += descriptor_vector(dtype=0x4003, ident=1, group_raw=0xF0000000, link=0, offset=labels_off,
                             size=len(labels), padded=len(labels), ctime=1504657553)
    img += descriptor_vector(dtype=0, ident=0, group_raw=0, link=0, offset=0, size=0, padded=0, ctime=0,
                             used=False)
    img += descriptor_vector(dtype=0x4004, ident=3, group_raw=0xF0000002, link=0, offset=part_off,
                             size=len(part), padded=part_off - sig_off - len(sig) + len(part), ctime=1504657553,
                             name=b"rootfs", extra=partition_extra(1, 2, b"04\0"))
    img += labels + sig
    img += bytes(part_off - len(img)) + part
    return bytes(img)


def test_parse_hand_built_vector(tmp_path):
    p = tmp_path / "h.sif"
    p.write_bytes(hand_built_image())
    assert is_sif(p)
    with SifFile.open(p) as f:
        h = f.header
        assert h.launch_script == LAUNCH.decode() and h.version == "01"
        assert h.arch == "04" and h.arch_name == "arm64"
        assert h.uuid == "b2659d4e-bd50-4ea5-bd17-eec5e54f918e"
        assert (h.created_at, h.descriptors_total, h.descriptors_offset) == (1504657553, 3, 256)
        assert [d.id for d in f.descriptors] == [1, 3]  # the unused slot is skipped
        lab, part = f.descriptors
        assert lab.data_type == DataType.LABELS and lab.group_id == 0 and lab.fs_type is None
        assert f.read_object(lab) == b'{"maintainer":"me"}'
        assert part.name == "rootfs" and part.group_id == 2
        assert (part.fs_type, part.part_type, part.part_arch) == (FsType.SQUASH, PartType.PRIM_SYS, "04")
        assert f.primary_partition() is part
        assert f.find(DataType.LABELS) == [lab] and f.find(DataType.PARTITION, "nope") == []
        assert f.read_object(part)[:4] == b"hsqs"


def test_unknown_types_are_kept(tmp_path):
    img = bytearray(hand_built_image())
    put(img, 256, i32(0x4FFF))  # a future data type
    put(img, 256 + 2 * 585 + 201, i32(99))  # unknown fs type
    p = tmp_path / "u.sif"
    p.write_bytes(bytes(img))
    with SifFile.open(p) as f:
        assert f.descriptors[0].data_type == 0x4FFF and f.descriptors[0].type_name == "Unknown"
        assert f.descriptors[1].fs_type == 99


# --- hostile input ---------------------------------------------------------------------------


def write(tmp_path, data: bytes, name: str = "x.sif"):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def mutate(data: bytes, offset: int, value: bytes) -> bytes:
    b = bytearray(data)
    put(b, offset, value)
    return bytes(b)


@pytest.mark.parametrize(
    ("label", "make", "needle"),
    [
        ("empty", lambda d: b"", "truncated"),
        ("short header", lambda d: d[:100], "truncated"),
        ("wrong magic", lambda d: mutate(d, 32, b"NOT_MAGIC\0"), "not a SIF"),
        ("newer version", lambda d: mutate(d, 42, b"02\0"), "version"),
        ("garbage version", lambda d: mutate(d, 42, b"\xff\xff\0"), "version"),
        ("absurd total", lambda d: mutate(d, 88, i64(10**15)), "descriptors"),
        ("negative total", lambda d: mutate(d, 88, i64(-1)), "descriptors"),
        ("table past EOF", lambda d: mutate(d, 96, i64(2**40)), "outside"),
        ("table offset negative", lambda d: mutate(d, 96, i64(-4096)), "outside"),
        ("table truncated", lambda d: d[:300], "outside"),
        ("object past EOF", lambda d: mutate(d, 256 + 17, i64(2**62)), "outside"),
        ("object size negative", lambda d: mutate(d, 256 + 25, i64(-5)), "outside"),
        ("object overflows", lambda d: mutate(d, 256 + 25, i64(2**63 - 1)), "outside"),
        ("data truncated", lambda d: d[:4000], "outside"),
    ],
)
def test_hostile_images_give_image_error(tmp_path, label, make, needle):
    p = write(tmp_path, make(hand_built_image()))
    with pytest.raises(ImageError) as e:
        SifFile.open(p)
    assert needle in str(e.value), label
    assert "\n" not in str(e.value)


def test_not_a_file_and_missing(tmp_path):
    with pytest.raises(ImageError):
        SifFile.open(tmp_path)
    with pytest.raises(ImageError, match="cannot open"):
        SifFile.open(tmp_path / "missing.sif")
    assert not is_sif(tmp_path / "missing.sif")
    assert not is_sif(tmp_path)
    assert not is_sif(write(tmp_path, b"short"))


def test_random_corruption_never_crashes(tmp_path):
    base = expected_small_image()
    rng = random.Random(1234)
    for i in range(300):
        b = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            pos = rng.choice([rng.randrange(0, 128), rng.randrange(4096, 4096 + 3 * 585)])
            b[pos] = rng.randrange(256)
        if rng.random() < 0.3:
            del b[rng.randrange(len(b)):]
        p = write(tmp_path, bytes(b), f"c{i}.sif")
        try:
            with SifFile.open(p) as f:
                for d in f.descriptors:
                    try:
                        f.read_object(d, limit=1 << 20)
                    except ImageError:
                        pass
                    _ = (d.fs_type, d.part_type, d.part_arch, d.type_name)
        except ImageError:
            pass


def test_read_object_limit_and_primary_errors(tmp_path):
    p = write(tmp_path, expected_small_image())
    with SifFile.open(p) as f:
        part = f.primary_partition()
        with pytest.raises(ImageError, match="limit"):
            f.read_object(part, limit=100)
        assert len(f.read_object(part, limit=len(PART))) == len(PART)
    write_sif(tmp_path / "np.sif", [SifObject(DataType.DEFFILE, b"x")], created_at=T)
    with SifFile.open(tmp_path / "np.sif") as f, pytest.raises(ImageError, match="no primary"):
        f.primary_partition()
    # two PrimSys partitions (Go refuses to write them; a hostile file may still have them)
    img = bytearray(hand_built_image())
    put(img, 256, descriptor_vector(dtype=0x4004, ident=1, group_raw=0xF0000001, link=0, offset=2011,
                                    size=4, padded=4, ctime=0, extra=partition_extra(1, 2, b"04\0")))
    with SifFile.open(write(tmp_path, bytes(img), "two.sif")) as f, pytest.raises(ImageError, match="primary"):
        f.primary_partition()


# --- write-side validation and atomicity -----------------------------------------------------


def leftovers(tmp_path) -> list[str]:
    return [n for n in os.listdir(tmp_path) if ".tmp-" in n]


@pytest.mark.parametrize(
    ("objects", "needle"),
    [
        ([SifObject(DataType.GENERIC, b"x")] * 49, "at most 48"),
        ([SifObject(DataType.GENERIC, b"x", name="n" * 129)], "name"),
        ([SifObject(DataType.GENERIC, b"x", extra=b"e" * 385)], "extra"),
        ([SifObject(DataType.PARTITION, b"x", arch="vax")], "architecture"),
        ([SifObject(DataType.PARTITION, b"x"), SifObject(DataType.PARTITION, b"y")], "one primary"),
        ([SifObject(DataType.GENERIC, b"x", alignment=3)], "power of two"),
        ([SifObject(DataType.GENERIC, "/nonexistent/file")], "cannot read"),
        ([SifObject(DataType.GENERIC, "/")], "not a regular file"),
    ],
)
def test_write_rejects_bad_objects(tmp_path, objects, needle):
    with pytest.raises(ImageError, match=needle):
        write_sif(tmp_path / "bad.sif", objects, created_at=T)
    assert not (tmp_path / "bad.sif").exists() and leftovers(tmp_path) == []


def test_write_interrupted_leaves_nothing(tmp_path, monkeypatch):
    def boom(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(S.os, "fsync", boom)
    with pytest.raises(KeyboardInterrupt):
        write_sif(tmp_path / "i.sif", small_objects(), created_at=T)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_write_replaces_existing_atomically(tmp_path):
    out = tmp_path / "a.sif"
    out.write_bytes(b"old")
    write_sif(out, small_objects(), created_at=T, deterministic_id=True)
    assert out.read_bytes() == expected_small_image() and leftovers(tmp_path) == []


def test_write_missing_directory(tmp_path):
    with pytest.raises(ImageError, match="cannot create"):
        write_sif(tmp_path / "no" / "a.sif", small_objects(), created_at=T)


def test_bad_source_date_epoch(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(ImageError, match="SOURCE_DATE_EPOCH"):
        write_sif(tmp_path / "a.sif", [])


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "fifo.sif"
    os.mkfifo(fifo)
    assert not is_sif(fifo)
    with pytest.raises(ImageError, match="not a regular file"):
        SifFile.open(fifo)


@pytest.mark.parametrize(
    "obj",
    [
        SifObject(1 << 40, b"x"),
        SifObject(DataType.GENERIC, b"x", linked_id=-1),
        SifObject(DataType.GENERIC, b"x", group_id=0xF0000000),
        SifObject(DataType.PARTITION, b"x", fs_type=1 << 33),
    ],
)
def test_write_rejects_out_of_range_numbers(tmp_path, obj):
    with pytest.raises(ImageError, match="out of range"):
        write_sif(tmp_path / "bad.sif", [obj], created_at=T)
    assert os.listdir(tmp_path) == []
