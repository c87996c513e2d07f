"""Flattening OCI layers into one tar stream and one squashfs (yurt.image.layers and the modules under it:
layer_blob, tar_reader, layer_paths; tar2sqfs on top)."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from yurt.errors import ImageError
from yurt.image import layer_blob, tar2sqfs, tar_reader
from yurt.image import layers as L
from yurt.image.layer_blob import Layer
from yurt.image.layers import merged_entries, write_merged_tar
from yurt.image.tar2sqfs import layers_to_sif, tar_to_squashfs

needs_tar2sqfs = pytest.mark.skipif(
    shutil.which("tar2sqfs") is None or shutil.which("unsquashfs") is None,
    reason="tar2sqfs (squashfs-tools-ng) or unsquashfs not installed",
)
needs_zstd = pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd not installed")
EPOCH = 1_600_000_000
GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
TAR = "application/vnd.oci.image.layer.v1.tar"


# --- building layers -------------------------------------------------------------------------


def f(name, data=b"", **attrs):
    return ("f", name, data, attrs)


def d(name, **attrs):
    return ("d", name, None, attrs)


def sym(name, target, **attrs):
    return ("l", name, target, attrs)


def hl(name, target, **attrs):
    return ("h", name, target, attrs)


def wh(name):
    parent, _, base = name.rpartition("/")
    return f(f"{parent}/.wh.{base}" if parent else f".wh.{base}")


def opq(directory):
    return f(f"{directory}/.wh..wh..opq")


def tar_bytes(entries, fmt=tarfile.PAX_FORMAT) -> bytes:
    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode="w", format=fmt) as tf:
        for kind, name, payload, attrs in entries:
            ti = tarfile.TarInfo(name)
            ti.mtime = attrs.pop("mtime", EPOCH)
            ti.mode = attrs.pop("mode", 0o755 if kind == "d" else 0o644)
            ti.type = {"f": tarfile.REGTYPE, "d": tarfile.DIRTYPE, "l": tarfile.SYMTYPE, "h": tarfile.LNKTYPE,
                       "c": tarfile.CHRTYPE, "p": tarfile.FIFOTYPE}[kind]
            for key, value in attrs.items():
                setattr(ti, key, value)
            if kind == "f":
                ti.size = len(payload)
                tf.addfile(ti, io.BytesIO(payload))
            else:
                if kind in ("l", "h"):
                    ti.linkname = payload
                tf.addfile(ti)
    return bio.getvalue()


_counter = [0]


def make_layer(tmp_path, entries, compression="gzip", media_type=None, fmt=tarfile.PAX_FORMAT) -> Layer:
    raw = tar_bytes(entries, fmt) if not isinstance(entries, bytes) else entries
    if compression == "gzip":
        blob = gzip.compress(raw, mtime=0)
    elif compression == "xz":
        blob = lzma.compress(raw)
    elif compression == "bzip2":
        blob = bz2.compress(raw)
    elif compression == "zstd":
        blob = subprocess.run(["zstd", "-q", "-c"], input=raw, capture_output=True, check=True).stdout
    else:
        blob = raw
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    _counter[0] += 1
    path = tmp_path / f"layer{_counter[0]}-{digest[7:19]}"
    path.write_bytes(blob)
    if media_type is None:
        media_type = {"gzip": GZ, "zstd": TAR + "+zstd"}.get(compression, TAR)
    return Layer(str(path), media_type, digest)


def merged(layers, **kw):
    """[(name, type, mode, uid, gid, linkname, content)] of the merged tar, in stream order."""
    out = io.BytesIO()
    write_merged_tar(layers, out, **kw)
    out.seek(0)
    result = []
    with tarfile.open(fileobj=out, mode="r:") as tf:
        for ti in tf:
            content = tf.extractfile(ti).read() if ti.isreg() else None
            result.append((ti.name, ti.type, ti.mode, ti.uid, ti.gid, ti.linkname, content))
    return result


def by_name(entries):
    return {e[0]: e for e in entries}


def check_order(entries):
    """Each path once, parents before children, hard link targets before links."""
    seen = set()
    for name, kind, *_rest in entries:
        assert name not in seen, f"{name} twice"
        parent = os.path.dirname(name)
        if parent and parent != ".":
            assert parent in seen, f"{name} before its parent"
        if kind == tarfile.LNKTYPE:
            assert _rest[3] in seen, f"link {name} before its target"
        seen.add(name)


# --- one layer ---------------------------------------------------------------------------------


def test_single_layer(tmp_path):
    layer = make_layer(tmp_path, [
        d("./"), d("./etc"), f("./etc/hostname", b"box\n"), f("/usr/bin/tool", b"#!", mode=0o755),
        sym("bin", "usr/bin"), sym("etc/abs", "/etc/hostname"), hl("usr/bin/tool2", "./usr/bin/tool"),
        f("usr/bin/.wh.ghost"),  # a whiteout in the bottom layer deletes nothing and is not shown
    ])
    entries = merged([layer])
    check_order(entries)
    names = [e[0] for e in entries]
    assert names == [".", "etc", "etc/hostname", "usr", "usr/bin", "usr/bin/tool", "bin", "etc/abs", "usr/bin/tool2"]
    e = by_name(entries)
    assert e["etc/hostname"][6] == b"box\n"
    assert e["usr/bin/tool"][2] == 0o755
    assert e["usr"][1] == tarfile.DIRTYPE and e["usr"][2] == 0o755  # made up for the child
    assert e["etc/abs"][5] == "/etc/hostname"  # absolute symlink targets are kept
    assert e["usr/bin/tool2"][1] == tarfile.LNKTYPE and e["usr/bin/tool2"][5] == "usr/bin/tool"


def test_single_layer_is_read_once(tmp_path, monkeypatch):
    calls = []
    real = L._iter_layer
    monkeypatch.setattr(L, "_iter_layer", lambda layer, budget: (calls.append(layer), real(layer, budget))[1])
    one = make_layer(tmp_path, [f("a", b"1")])
    two = make_layer(tmp_path, [f("b", b"2")])
    merged([one])
    assert calls == [one]
    calls.clear()
    merged([one, two])
    assert calls == [two, one, two]  # the header pass reads layers 2..n only


def test_empty_layers(tmp_path):
    empty_blob = tmp_path / "empty"
    empty_blob.write_bytes(b"")
    empty_tar = make_layer(tmp_path, [])
    layer = make_layer(tmp_path, [f("x", b"x")])
    assert [e[0] for e in merged([Layer(str(empty_blob)), empty_tar, layer])] == ["x"]
    assert merged([]) == []


@pytest.mark.parametrize("compression", ["gzip", "none", "xz", "bzip2", pytest.param("zstd", marks=needs_zstd)])
def test_compressions(tmp_path, compression):
    data = os.urandom(300_000) + bytes(300_000)
    layer = make_layer(tmp_path, [d("opt"), f("opt/blob", data)], compression=compression)
    assert by_name(merged([layer]))["opt/blob"][6] == data


def test_media_type_lies(tmp_path):
    """The content decides: a gzip blob labelled plain tar, a plain tar labelled gzip."""
    gz = make_layer(tmp_path, [f("a", b"A")], compression="gzip", media_type=TAR)
    plain = make_layer(tmp_path, [f("b", b"B")], compression="none", media_type=GZ)
    assert [e[0] for e in merged([gz, plain])] == ["a", "b"]


def test_multi_member_gzip(tmp_path):
    raw = tar_bytes([f("a", b"A" * 5000), f("b", b"B")])
    path = tmp_path / "multi.tgz"
    path.write_bytes(gzip.compress(raw[:1024]) + gzip.compress(raw[1024:]))
    assert by_name(merged([Layer(str(path), GZ, "sha256:multi")]))["a"][6] == b"A" * 5000


@needs_zstd
def test_zstd_layer_inside_a_bigger_file(tmp_path):
    """Layers may be byte ranges of an archive; zstd then reads through a feeder thread."""
    layer = make_layer(tmp_path, [f("z", b"zstd" * 1000)], compression="zstd")
    blob = Path(layer.path).read_bytes()
    big = tmp_path / "archive"
    big.write_bytes(b"J" * 1000 + blob + b"K" * 1000)
    ranged = Layer(str(big), layer.media_type, layer.digest, 1000, len(blob))
    assert by_name(merged([ranged]))["z"][6] == b"zstd" * 1000


def test_missing_zstd_program(tmp_path, monkeypatch):
    raw = tar_bytes([f("a")])
    path = tmp_path / "fake.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd" + raw)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))  # no zstd (nor anything else) to be found
    with pytest.raises(ImageError, match="zstd program is not installed"):
        merged([Layer(str(path), TAR + "+zstd", "sha256:z")])


# --- merging ------------------------------------------------------------------------------------


def two_layers(tmp_path):
    lower = make_layer(tmp_path, [
        d("etc", mode=0o755), f("etc/passwd", b"root\n"), f("etc/shadow", b"secret", mode=0o600),
        d("etc/old.d"), f("etc/old.d/conf", b"c"),
        d("opt"), d("opt/keep"), f("opt/keep/x", b"x"), f("opt/gone", b"g"),
        d("dir2file"), f("dir2file/child", b"c"),
        f("file2dir", b"f"),
        f("lib.so", b"library"), hl("lib.so.1", "lib.so"),
        f("perl", b"perl-5.36"), hl("perl5.36", "perl"),
        d("home", mode=0o700, uid=5),
    ], compression="gzip")
    upper = make_layer(tmp_path, [
        d("etc", mode=0o750, uid=42),
        wh("etc/shadow"), wh("etc/old.d"),
        d("opt"), opq("opt"), f("opt/new", b"n"),
        f("dir2file", b"now a file"),
        d("file2dir", mode=0o711), f("file2dir/inner", b"i"),
        hl("lib-link", "lib.so"),  # a hard link across layers
        f("perl", b"perl-5.38"),  # replaces one name of a hard-linked pair
        d("home/user", uid=1000), f("home/user/.profile", b"p", uid=1000),
    ], compression="none")
    return lower, upper


def test_whiteouts_opaque_and_replacements(tmp_path):
    entries = merged(list(two_layers(tmp_path)))
    check_order(entries)
    e = by_name(entries)
    assert not [n for n in e if ".wh." in n]
    assert "etc/shadow" not in e and "etc/old.d" not in e and "etc/old.d/conf" not in e
    assert e["etc/passwd"][6] == b"root\n"
    assert (e["etc"][2], e["etc"][3]) == (0o750, 42)  # the topmost directory's attributes
    assert [n for n in e if n.startswith("opt/")] == ["opt/new"]
    assert e["dir2file"][1] == tarfile.REGTYPE and e["dir2file"][6] == b"now a file"
    assert "dir2file/child" not in e
    assert e["file2dir"][1] == tarfile.DIRTYPE and e["file2dir"][2] == 0o711
    assert e["file2dir/inner"][6] == b"i"
    assert e["lib-link"][1] == tarfile.LNKTYPE and e["lib-link"][5] == "lib.so"
    assert e["perl"][6] == b"perl-5.38"
    # perl5.36 was a link to the old perl: it keeps the old content
    assert e["perl5.36"][1] == tarfile.REGTYPE and e["perl5.36"][6] == b"perl-5.36"
    assert (e["home"][2], e["home"][3]) == (0o700, 5)
    assert e["home/user/.profile"][3] == 1000


def test_directory_implied_by_children_replaces_a_file(tmp_path):
    lower = make_layer(tmp_path, [sym("lib", "/usr/lib"), f("x", b"1")])
    upper = make_layer(tmp_path, [f("lib/libc.so", b"c")])  # no entry for lib itself
    e = by_name(merged([lower, upper]))
    assert e["lib"][1] == tarfile.DIRTYPE and e["lib/libc.so"][6] == b"c"


def test_whiteout_then_recreate_and_delete_in_three_layers(tmp_path):
    a = make_layer(tmp_path, [d("d", mode=0o700), f("d/old", b"o"), f("f", b"1")])
    b = make_layer(tmp_path, [wh("d"), wh("f")])
    c = make_layer(tmp_path, [d("d", mode=0o755), f("d/new", b"n")])
    e = by_name(merged([a, b, c]))
    assert "d/old" not in e and "f" not in e
    assert e["d"][2] == 0o755 and e["d/new"][6] == b"n"


def test_opaque_marker_keeps_own_layer_and_root_opaque(tmp_path):
    a = make_layer(tmp_path, [d("d"), f("d/a", b"a"), f("top", b"t")])
    b = make_layer(tmp_path, [f("d/b", b"b"), opq("d")])  # marker after the sibling: order does not matter
    c = make_layer(tmp_path, [f(".wh..wh..opq"), f("only", b"o")])
    assert sorted(n for n in by_name(merged([a, b])) if n.startswith("d/")) == ["d/b"]
    assert [e[0] for e in merged([a, b, c])] == ["only"]


def test_duplicate_entries_in_one_layer(tmp_path):
    layer = make_layer(tmp_path, [d("d"), d("d", mode=0o700), f("f", b"first"), f("f", b"second")])
    entries = merged([layer])
    check_order(entries)
    assert len(entries) == 2


def test_aufs_metadata_is_dropped(tmp_path):
    layer = make_layer(tmp_path, [d(".wh..wh.plnk"), f(".wh..wh.plnk/123.456", b"x"), f(".wh..wh.aufs"), f("a")])
    assert [e[0] for e in merged([layer])] == ["a"]


def test_merged_entries_api(tmp_path):
    layer = make_layer(tmp_path, [d("etc"), f("etc/motd", b"hello" * 1000)])
    seen = []
    for ti, data in merged_entries([layer]):
        assert isinstance(ti, tarfile.TarInfo)
        seen.append((ti.name, data.read() if data is not None else None))
    assert seen == [("etc", None), ("etc/motd", b"hello" * 1000)]


# --- tar formats ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_long_names_and_links(tmp_path, fmt):
    deep = "/".join(["directory"] * 12)  # 119 bytes: ustar prefix/name split
    longer = "/".join(["d" * 60] * 5) + "/file"  # 309 bytes: GNU longname / pax path
    entries = [d(deep), f(deep + "/x", b"x")]
    if fmt != tarfile.USTAR_FORMAT:
        entries += [f(longer, b"long"), sym("lnk", "t" * 200), hl("hard", longer)]
    layer = make_layer(tmp_path, entries, fmt=fmt)
    e = by_name(merged([layer]))
    assert e[deep + "/x"][6] == b"x"
    if fmt != tarfile.USTAR_FORMAT:
        assert e[longer][6] == b"long"
        assert e["lnk"][5] == "t" * 200
        assert e["hard"][5] == longer


def test_pax_attributes_round_trip(tmp_path):
    layer = make_layer(tmp_path, [
        f("naïve-ü", b"u", uid=3_000_000, gid=4_000_000, uname="ü" * 40),
        f("caps", b"c", pax_headers={"SCHILY.xattr.security.capability": "\x01\x00\x00\x02",
                                       "SCHILY.xattr.user.note": "hi",
                                       "SCHILY.xattr.system.posix_acl_access": "squashfs cannot store this"}),
        f("frac", b"t", mtime=1234.75),
    ])
    out = io.BytesIO()
    write_merged_tar([layer], out)
    out.seek(0)
    with tarfile.open(fileobj=out) as tf:
        m = {ti.name: ti for ti in tf}
    assert (m["naïve-ü"].uid, m["naïve-ü"].gid, m["naïve-ü"].uname) == (3_000_000, 4_000_000, "ü" * 40)
    assert m["caps"].pax_headers["SCHILY.xattr.user.note"] == "hi"
    assert m["caps"].pax_headers["SCHILY.xattr.security.capability"] == "\x01\x00\x00\x02"
    assert "SCHILY.xattr.system.posix_acl_access" not in m["caps"].pax_headers
    assert m["frac"].mtime == 1234


def test_non_utf8_names(tmp_path):
    ti = tarfile.TarInfo("pl\udce9in")  # the Latin-1 byte 0xe9, not UTF-8
    raw = ti.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape") + bytes(1024)
    layer = make_layer(tmp_path, raw, compression="none")
    out = io.BytesIO()
    write_merged_tar([layer], out)
    assert b"pl\xe9in" in out.getvalue()


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar not installed")
@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_sparse_files_from_gnu_tar(tmp_path, fmt):
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as out:
        out.write(b"head")
        out.seek(1 << 20)
        out.write(b"middle")
        out.truncate(3 << 20)
    archive = tmp_path / "sparse.tar"
    subprocess.run(["tar", "--sparse", f"--format={fmt}", "-C", str(src), "-cf", str(archive), "sparse"], check=True)
    layer = Layer(str(archive), TAR, "sha256:sparse")
    content = by_name(merged([layer]))["sparse"][6]
    assert content == (src / "sparse").read_bytes()


def read_pieces(reader) -> bytes:
    parts = []
    while piece := reader.read(4096):
        parts.append(bytes(piece))
    return b"".join(parts)


def test_reader_agrees_with_tarfile(tmp_path):
    """Differential check of the streaming reader against tarfile on a mixed archive."""
    entries = [d("./"), d("a", uid=7, gid=8, mode=0o1777), f("a/file", os.urandom(70_000), mtime=99),
               sym("a/sym", "../x"), hl("a/hard", "a/file"), ("c", "a/null", None, {"devmajor": 1, "devminor": 3}),
               ("p", "a/fifo", None, {}), f("b" * 150 + "/c" * 40, b"long")]
    raw = tar_bytes(entries)
    layer = make_layer(tmp_path, raw, compression="gzip")
    ours = []
    budget = layer_blob._Budget(1 << 30)
    for entry, data in tar_reader._iter_layer(layer, budget):
        content = read_pieces(data) if data is not None else None
        ours.append((entry.name.rstrip("/"), entry.type, entry.mode, entry.uid, entry.gid, entry.mtime,
                     entry.linkname, entry.devmajor, entry.devminor, content))
    theirs = []
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        for ti in tf:
            content = tf.extractfile(ti).read() if ti.isreg() else None
            theirs.append((ti.name, ti.type, ti.mode, ti.uid, ti.gid, ti.mtime, ti.linkname, ti.devmajor,
                           ti.devminor, content))
    assert ours == theirs


def test_header_writer_round_trip():
    T = tar_reader
    cases = [
        T._Entry("a" * 100, T.REGTYPE, 0o4755, 1, 2, 10, 5, "", "root", "root", 0, 0, None),
        T._Entry("x/" * 60 + "y", T.DIRTYPE, 0o755, 0, 0, 0, 0, "", "", "", 0, 0, None),  # prefix split
        T._Entry("z" * 300, T.SYMTYPE, 0o777, 0, 0, 0, 0, "t" * 150, "", "", 0, 0, None),  # pax
        T._Entry("dev", T.CHRTYPE, 0o666, 0, 0, 0, 0, "", "", "", 4, 64, None),
        T._Entry("big", T.REGTYPE, 0o644, 1 << 22, 1 << 22, 0, L._MAX_MTIME, "", "", "", 0, 0, None),
    ]
    for e in cases:
        raw = L._header(e) + bytes(-e.size % 512 if e.type == T.REGTYPE else 0) + b"\0" * e.size + bytes(1024)
        ti = next(iter(tarfile.open(fileobj=io.BytesIO(raw))))
        assert (ti.name, ti.type, ti.mode, ti.uid, ti.gid, ti.mtime, ti.linkname, ti.devmajor, ti.devminor) == (
            e.name, e.type, e.mode, e.uid, e.gid, e.mtime, e.linkname, e.devmajor, e.devminor)


# --- hostile input ------------------------------------------------------------------------------


@pytest.mark.parametrize("entries, message", [
    ([f("../etc/passwd", b"x")], r"points outside the image"),
    ([f("a/../../x", b"x")], r"points outside the image"),
    ([f("a"), hl("b", "../../etc/shadow")], r"points outside the image"),
    ([f("a"), hl("b", "missing")], r"not in the image before it"),
    ([d("dir"), hl("b", "dir")], r"points at directory"),
    ([f("a"), hl("b", "/")], r"image root"),
    ([f("x/" + "n" * 4100, b"")], r"longer than 4096 bytes"),
    ([f("c" * 300, b"")], r"component over 255 bytes"),
    ([f("a/.wh..")], r"invalid whiteout"),
    ([f("a", pax_headers={"path": "evil\x00name"})], r"NUL byte"),
    ([f("file"), f("file/child")], r"not a directory"),
    ([f(".", b"root as a file")], r"image root\) is not a directory"),
    ([f("a", uid=-5)], r"out-of-range owner|invalid pax number"),
])
def test_hostile_members(tmp_path, entries, message):
    layer = make_layer(tmp_path, entries)
    with pytest.raises(ImageError, match=message) as info:
        merged([layer])
    assert layer.digest in str(info.value)  # the layer is named


def test_absolute_and_dotted_names_are_normalised(tmp_path):
    layer = make_layer(tmp_path, [f("/etc/a", b"1"), f("./etc/./b", b"2"), f("etc//c", b"3"), f("x/../etc/d", b"4")])
    assert [e[0] for e in merged([layer])] == ["etc", "etc/a", "etc/b", "etc/c", "etc/d"]


def test_devices_fifos_and_setuid_are_kept(tmp_path):
    layer = make_layer(tmp_path, [
        ("c", "dev/null", None, {"devmajor": 1, "devminor": 3, "mode": 0o666}),
        ("p", "run/fifo", None, {"mode": 0o600}),
        f("bin/su", b"su", mode=0o4755), f("bin/wall", b"w", mode=0o2755, gid=5),
    ])
    e = by_name(merged([layer]))
    assert e["dev/null"][1] == tarfile.CHRTYPE and e["run/fifo"][1] == tarfile.FIFOTYPE
    assert e["bin/su"][2] == 0o4755 and e["bin/wall"][2] == 0o2755


def test_decompression_bomb(tmp_path, monkeypatch):
    layer = make_layer(tmp_path, [f("zeros", bytes(8 << 20))])
    assert os.path.getsize(layer.path) < 100_000
    with pytest.raises(ImageError, match="more than 1000000 bytes"):
        merged([layer], max_bytes=1_000_000)
    monkeypatch.setenv("YURT_MAX_IMAGE_BYTES", "1M")
    with pytest.raises(ImageError, match="decompression bomb"):
        merged([layer])
    monkeypatch.setenv("YURT_MAX_IMAGE_BYTES", "lots")
    with pytest.raises(ImageError, match="YURT_MAX_IMAGE_BYTES"):
        merged([layer])


def test_too_many_members(tmp_path, monkeypatch):
    monkeypatch.setattr(layer_blob, "MAX_MEMBERS", 5)
    layer = make_layer(tmp_path, [f(f"f{i}") for i in range(6)])
    with pytest.raises(ImageError, match="more than 5 tar members"):
        merged([layer])


def corrupted(tmp_path, blob: bytes, name: str) -> Layer:
    path = tmp_path / name
    path.write_bytes(blob)
    return Layer(str(path), GZ, f"sha256:{name}")


def test_corrupt_and_truncated_data(tmp_path):
    raw = tar_bytes([f(f"file{i}", os.urandom(20_000)) for i in range(10)])
    blob = gzip.compress(raw)
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0xFF
    cases = {
        "flipped": (bytes(flipped), r"corrupt gzip data|truncated|crc|checksum"),
        "truncated-gzip": (blob[: len(blob) // 2], r"truncated gzip data"),
        "not-a-tar": (b"hello, this is not an archive" * 40, r"not gzip data"),
    }
    bad_header = bytearray(raw)
    bad_header[20_480 + 512 + 100] ^= 0x01  # the mode field of a header in the middle
    cases["bad-checksum"] = (gzip.compress(bytes(bad_header)), r"bad checksum")
    cases["truncated-tar"] = (gzip.compress(raw[:30_000]), r"truncated tar data")
    for name, (data, message) in cases.items():
        with pytest.raises(ImageError, match=message):
            merged([corrupted(tmp_path, data, name)])


def test_fuzzed_layers_only_raise_image_error(tmp_path):
    import random

    rng = random.Random(1234)
    base = tar_bytes([d("dir"), f("dir/" + "n" * 120, os.urandom(3000)), hl("link", "dir/" + "n" * 120),
                      f("ü" * 30, b"x", pax_headers={"SCHILY.xattr.user.a": "b"}), sym("s", "/abs")])
    path = tmp_path / "fuzz"
    for _ in range(300):
        raw = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            raw[rng.randrange(len(raw))] = rng.choice((rng.randrange(256), *b"07 \x00\x80\xff/."))
        if rng.random() < 0.2:
            raw = raw[:rng.randrange(len(raw))]
        path.write_bytes(gzip.compress(bytes(raw)) if rng.random() < 0.3 else bytes(raw))
        try:
            merged([Layer(str(path), "", "sha256:fuzz")] * rng.choice((1, 2)), max_bytes=1 << 22)
        except ImageError:
            pass


def test_encrypted_layers_are_refused(tmp_path):
    layer = make_layer(tmp_path, [f("a")], media_type=GZ + "+encrypted")
    with pytest.raises(ImageError, match="encrypted"):
        merged([layer])


# --- squashfs ---------------------------------------------------------------------------------


_LLN = re.compile(r"^(\S+) (\d+)/(\d+) +(\d+, *\d+|\d+) \S+ \S+ (.*)$")


def lln(image) -> dict:
    """path -> (mode string, "uid/gid", size or "major, minor", symlink target) from unsquashfs -lln."""
    out = subprocess.run(["unsquashfs", "-lln", "-d", "", str(image)], capture_output=True, text=True,
                         check=True).stdout
    result = {}
    for line in out.splitlines():
        m = _LLN.match(line)
        if m:
            path, _, target = m.group(5).partition(" -> ")
            result[path] = (m.group(1), f"{m.group(2)}/{m.group(3)}", m.group(4), target)
    return result


def cat(image, path) -> bytes:
    return subprocess.run(["unsquashfs", "-cat", str(image), path], capture_output=True, check=True).stdout


@needs_tar2sqfs
def test_squashfs_keeps_owners_and_modes(tmp_path):
    layer = make_layer(tmp_path, [
        d("./", mode=0o755), d("home"), d("home/u", uid=1234, gid=1234, mode=0o700),
        f("home/u/file", b"mine", uid=1234, gid=100, mode=0o640),
        f("usr/bin/sudo", b"suid", mode=0o4755), ("c", "dev/null", None, {"devmajor": 1, "devminor": 3}),
        sym("etc/localtime", "/usr/share/zoneinfo/UTC"),
    ])
    lower, upper = two_layers(tmp_path)
    out = tmp_path / "image.sqfs"
    stats: dict = {}
    tar_to_squashfs([layer, lower, upper], out, reproducible_epoch=EPOCH, processors=2, stats=stats)
    listing = lln(out)
    assert listing["/home/u/file"][:2] == ("-rw-r-----", "1234/100")
    assert listing["/home/u"][:2] == ("drwx------", "1234/1234")
    assert listing["/usr/bin/sudo"][0] == "-rwsr-xr-x"
    assert listing["/dev/null"][0].startswith("c") and listing["/dev/null"][2].replace(" ", "") == "1,3"
    assert listing["/etc/localtime"][3] == "/usr/share/zoneinfo/UTC"
    assert listing["/etc"][:2] == ("drwxr-x---", "42/0")
    assert "/etc/shadow" not in listing and "/opt/keep" not in listing
    assert cat(out, "home/u/file") == b"mine"
    assert cat(out, "perl5.36") == b"perl-5.36"
    assert cat(out, "dir2file") == b"now a file"
    assert stats["entries"] > 10 and stats["total_s"] >= stats["merge_s"] >= 0
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".image.sqfs")]


@needs_tar2sqfs
def test_squashfs_is_reproducible(tmp_path):
    lower, upper = two_layers(tmp_path)
    digests = set()
    for i in range(2):
        out = tmp_path / f"r{i}.sqfs"
        tar_to_squashfs([lower, upper], out, reproducible_epoch=EPOCH, processors=2)
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    assert len(digests) == 1


@needs_tar2sqfs
@pytest.mark.parametrize("compression", ["gzip", "lz4", "zstd"])
def test_squashfs_compressions(tmp_path, compression):
    layer = make_layer(tmp_path, [f("data", b"abc" * 100_000)])
    out = tmp_path / "c.sqfs"
    tar_to_squashfs([layer], out, compression=compression, processors=1)
    if compression == "lz4":
        # unsquashfs 4.5 rejects tar2sqfs's lz4 id table (the kernel and squashfuse read it):
        # check with squashfs-tools-ng's own reader.
        if shutil.which("rdsquashfs") is None:
            pytest.skip("rdsquashfs not installed")
        content = subprocess.run(["rdsquashfs", "-c", "/data", str(out)], capture_output=True, check=True).stdout
    else:
        content = cat(out, "data")
    assert content == b"abc" * 100_000
    super_compression = {"gzip": 1, "lz4": 5, "zstd": 6}[compression]
    assert int.from_bytes(out.read_bytes()[20:22], "little") == super_compression


def test_compression_options_are_checked(tmp_path):
    layer = make_layer(tmp_path, [f("a")])
    with pytest.raises(ImageError, match="unknown squashfs compression"):
        tar_to_squashfs([layer], tmp_path / "x", compression="brotli")
    with pytest.raises(ImageError, match="out of range"):
        tar_to_squashfs([layer], tmp_path / "x", compression="zstd", level=40)
    with pytest.raises(ImageError, match="has no level"):
        tar_to_squashfs([layer], tmp_path / "x", compression="lz4", level=3)
    assert tar2sqfs._compressor_args("zstd", None) == ["-c", "zstd", "-X", "level=3"]
    assert tar2sqfs._compressor_args("lz4", None) == ["-c", "lz4"]


@needs_tar2sqfs
def test_squashfs_failure_leaves_nothing(tmp_path):
    good = make_layer(tmp_path, [f("a", os.urandom(1 << 20))])
    bad = make_layer(tmp_path, [f("../escape")])
    out = tmp_path / "out.sqfs"
    before = set(os.listdir(tmp_path))
    with pytest.raises(ImageError, match="points outside the image"):
        tar_to_squashfs([good, bad], out)
    assert set(os.listdir(tmp_path)) == before


@needs_tar2sqfs
def test_layers_to_sif(tmp_path):
    from yurt.image.sif import DataType, PartType, SifFile

    lower, upper = two_layers(tmp_path)
    config = {"architecture": "arm64", "os": "linux",
              "config": {"Env": ["PATH=/usr/bin"], "Entrypoint": ["/bin/sh"], "Cmd": ["-c", "true"],
                         "WorkingDir": "/home", "User": "1000", "Labels": {"org.example": "yes"}},
              "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64] * 2}}
    out = tmp_path / "img.sif"
    layers_to_sif([lower, upper], out, oci_config=config, reproducible_epoch=EPOCH, processors=1)
    with SifFile.open(out) as sif:
        part = sif.primary_partition()
        assert part.part_type == PartType.PRIM_SYS and part.part_arch == "04"
        (obj,) = sif.find(DataType.GENERIC_JSON, "oci-config.json")
        assert json.loads(sif.read_object(obj)) == config["config"]
        (labels,) = sif.find(DataType.LABELS)
        assert json.loads(sif.read_object(labels)) == {"org.example": "yes"}
        image = tmp_path / "part.sqfs"
        with open(out, "rb") as src:
            src.seek(part.offset)
            image.write_bytes(src.read(part.size))
    assert cat(image, "etc/passwd") == b"root\n"
    assert sorted(os.listdir(tmp_path)) == sorted(p for p in os.listdir(tmp_path) if not p.startswith("."))
    first = hashlib.sha256(out.read_bytes()).hexdigest()
    layers_to_sif([lower, upper], out, oci_config=config, reproducible_epoch=EPOCH, processors=1)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == first


def test_layers_to_sif_rejects_bad_config(tmp_path):
    with pytest.raises(ImageError, match="unknown SIF architecture"):
        layers_to_sif([], tmp_path / "x.sif", oci_config={"architecture": "pdp11", "config": {}})
    with pytest.raises(ImageError, match="not a JSON object"):
        layers_to_sif([], tmp_path / "x.sif", oci_config={"config": ["no"]})
