"""The image cache (yurt.store.cache, .cleaning, .files) and its file locks (yurt.store.locks), with real
processes."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from yurt.errors import ImageError
from yurt.store.cache import Store
from yurt.store.cleaning import tree_size
from yurt.store.files import force_rmtree, parse_digest
from yurt.store.locks import LockTimeout, file_lock, try_lock

FORK = multiprocessing.get_context("fork")
DAY = 86400


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "cache", local_root=tmp_path / "local")


def tmp_files(store: Store) -> list[str]:
    return sorted(os.listdir(store.tmp)) if store.tmp.exists() else []


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def age(path: Path, days: float) -> None:
    when = time.time() - days * DAY
    os.utime(path, (when, when), follow_symlinks=False)


# ---------------------------------------------------------------------- layout, digests, writers


def test_root_defaults_to_env_and_is_private(tmp_path, monkeypatch):
    monkeypatch.setenv("YURT_CACHEDIR", str(tmp_path / "c"))
    monkeypatch.setenv("YURT_LOCAL_CACHEDIR", str(tmp_path / "l"))
    s = Store()
    assert s.root == tmp_path / "c" and s.root.stat().st_mode & 0o777 == 0o700
    assert s.unpacked == tmp_path / "l" / "unpacked"
    d = digest_of(b"x")
    assert s.blob_path(d) == s.root / "blobs" / "sha256" / d[7:]
    assert s.sif_path(d) == s.root / "sif" / f"{d[7:]}.sif"


@pytest.mark.parametrize("bad", ["sha256:../../etc/passwd", "sha256:" + "A" * 64, "md5:" + "0" * 32, "abc", ""])
def test_bad_digests_are_refused(store, bad):
    with pytest.raises(ImageError):
        parse_digest(bad)
    with pytest.raises(ImageError):
        store.blob_path(bad)


def test_blob_writer_commits_verified_read_only_file(store):
    data = b"layer" * 1000
    d = digest_of(data)
    assert not store.has_blob(d)
    with store.blob_writer(d) as tmp:
        assert tmp.parent == store.tmp and tmp.exists()
        tmp.write_bytes(data)
    path = store.blob_path(d)
    assert path.read_bytes() == data and path.stat().st_mode & 0o222 == 0
    assert store.has_blob(d) and store.has_blob(d, size=len(data)) and not store.has_blob(d, size=1)
    assert tmp_files(store) == []


def test_exception_inside_writer_leaves_nothing(store):
    d = digest_of(b"data")
    with pytest.raises(RuntimeError), store.blob_writer(d) as tmp:
        tmp.write_bytes(b"da")
        raise RuntimeError("network went away")
    assert not store.has_blob(d) and tmp_files(store) == []
    with pytest.raises(KeyboardInterrupt), store.sif_writer(d) as tmp:
        tmp.write_bytes(b"partial sif")
        raise KeyboardInterrupt
    assert not store.has_sif(d) and tmp_files(store) == []


def test_digest_mismatch_is_rejected(store, tmp_path):
    d = digest_of(b"expected")
    with pytest.raises(ImageError, match="does not match"), store.blob_writer(d) as tmp:
        tmp.write_bytes(b"something else")
    src = tmp_path / "src"
    src.write_bytes(b"something else")
    with pytest.raises(ImageError, match="does not match"):
        store.add_blob_from_file(d, src)
    with pytest.raises(ImageError):
        store.ensure_blob(d, lambda p: p.write_bytes(b"wrong"))
    assert not store.has_blob(d) and tmp_files(store) == []
    assert store.entries("blob") == []


def test_add_blob_from_file_and_commit_blob(store, tmp_path):
    src = tmp_path / "src"
    src.write_bytes(b"content")
    d = digest_of(b"content")
    assert store.add_blob_from_file(d, src).read_bytes() == b"content"
    assert src.exists()  # copied, not moved
    pre = tmp_path / "verified"
    pre.write_bytes(b"other")
    d2 = digest_of(b"other")
    assert store.commit_blob(d2, pre).read_bytes() == b"other" and not pre.exists()


def test_sif_writer_has_no_content_check(store):
    d = digest_of(b"manifest")
    with store.sif_writer(d) as tmp:
        tmp.write_bytes(b"SIF_MAGIC...")
    assert store.has_sif(d) and store.sif_path(d).read_bytes() == b"SIF_MAGIC..."


def test_refs_round_trip(store):
    d = digest_of(b"manifest")
    assert store.get_ref("docker://alpine:3.19") is None
    before = time.time()
    store.set_ref("docker://alpine:3.19", d, {"platform": "linux/amd64", "digest": "ignored"})
    ref = store.get_ref("docker://alpine:3.19")
    assert ref is not None
    assert ref["reference"] == "docker://alpine:3.19" and ref["digest"] == d and ref["platform"] == "linux/amd64"
    assert before <= ref["time"] <= time.time()
    assert store.get_ref("docker://alpine:3.20") is None
    d2 = digest_of(b"newer manifest")
    store.set_ref("docker://alpine:3.19", d2, {})
    assert store.get_ref("docker://alpine:3.19")["digest"] == d2
    (entry,) = store.entries("ref")
    assert entry.name == f"docker://alpine:3.19 -> {d2}"
    with pytest.raises(ImageError):
        store.set_ref("docker://x", "latest")
    entry.path.write_text("{not json")
    assert store.get_ref("docker://alpine:3.19") is None
    assert tmp_files(store) == []


# ---------------------------------------------------------------------- locks


def test_lock_timeout_message(tmp_path):
    path = tmp_path / "x.lock"
    with file_lock(path, what="sha256:abc"):
        assert path.stat().st_mode & 0o777 == 0o600
        t0 = time.monotonic()
        with pytest.raises(LockTimeout, match=r"another yurt is using sha256:abc; waited 0\.2 s"):
            with file_lock(path, timeout=0.2, what="sha256:abc"):
                pass
        assert time.monotonic() - t0 >= 0.2
        assert try_lock(path) is None
    fd = try_lock(path)
    assert fd is not None
    os.close(fd)


def test_shared_locks_coexist_and_exclude_writers(tmp_path):
    path = tmp_path / "s.lock"
    with file_lock(path, shared=True), file_lock(path, shared=True, timeout=0):
        assert try_lock(path) is None
    with file_lock(path, timeout=0):
        pass


def test_lock_survives_deletion_of_its_file(tmp_path):
    path = tmp_path / "d.lock"
    with file_lock(path) as fd:
        os.unlink(path)  # what clean does while holding the lock
        # A newcomer must not lock the orphaned inode we hold...
        with file_lock(path, timeout=0) as fd2:
            assert os.fstat(fd2).st_ino != os.fstat(fd).st_ino
            assert os.fstat(fd2).st_ino == path.stat().st_ino


# ---------------------------------------------------------------------- exactly once, across processes


def _produce_slowly(counter: Path):
    def produce(tmp: Path) -> None:
        with open(counter, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.3)
        tmp.write_bytes(b"converted image")
    return produce


def _ensure_worker(root, local, counter, barrier, results) -> None:
    store = Store(root, local_root=local)
    barrier.wait(timeout=30)
    d = digest_of(b"manifest")
    path = store.ensure_sif(d, _produce_slowly(Path(counter)))
    results.put((os.getpid(), str(path), path.read_bytes()))


def test_ensure_runs_produce_exactly_once_across_processes(store, tmp_path):
    counter = tmp_path / "counter"
    counter.touch()
    barrier = FORK.Barrier(8)
    results = FORK.Queue()
    procs = [FORK.Process(target=_ensure_worker, args=(store.root, store.local_root, counter, barrier, results))
             for _ in range(8)]
    for p in procs:
        p.start()
    got = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert len(counter.read_text().split()) == 1, "produce ran more than once"
    final = str(store.sif_path(digest_of(b"manifest")))
    assert {(path, data) for _, path, data in got} == {(final, b"converted image")}
    assert tmp_files(store) == []


def _produce_then_hang(started) -> object:
    def produce(tmp: Path) -> None:
        tmp.write_bytes(b"half an ima")
        started.set()
        time.sleep(120)
    return produce


def _hanging_worker(root, local, started) -> None:
    Store(root, local_root=local).ensure("image-x", _produce_then_hang(started), Path(root) / "sif" / "x.sif")


def test_killed_producer_leaves_nothing_and_frees_the_lock(store):
    started = FORK.Event()
    proc = FORK.Process(target=_hanging_worker, args=(store.root, store.local_root, started))
    proc.start()
    try:
        assert started.wait(timeout=30)
        with pytest.raises(LockTimeout, match="another yurt is using x.sif"), store.lock("image-x", timeout=0.1,
                                                                                          what="x.sif"):
            pass
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.join(timeout=30)
    assert proc.exitcode == -signal.SIGKILL
    final = store.root / "sif" / "x.sif"
    assert not final.exists()
    with store.lock("image-x", timeout=0):
        pass
    assert len(tmp_files(store)) == 1  # the dead producer's partial file...
    removed = store.clean()
    assert [e.kind for e in removed] == ["tmp"]  # ...is recognised as abandoned
    assert tmp_files(store) == []
    calls = []
    assert store.ensure("image-x", lambda t: (calls.append(1), t.write_bytes(b"ok")), final) == final
    assert final.read_bytes() == b"ok" and calls == [1]
    assert store.ensure("image-x", lambda t: calls.append(2), final) == final and calls == [1]


def test_failing_produce_leaves_nothing(store):
    final = store.root / "sif" / "y.sif"

    def broken(tmp: Path) -> None:
        tmp.mkdir()
        (tmp / "part").write_text("x")
        raise ImageError("conversion failed")

    with pytest.raises(ImageError):
        store.ensure("image-y", broken, final)
    assert not final.exists() and tmp_files(store) == []
    with pytest.raises(Exception, match="nothing was produced"):
        store.ensure("image-y", lambda t: None, final)
    with store.lock("image-y", timeout=0):
        pass


def test_ensure_outside_the_store_uses_a_sibling_temp(store, tmp_path):
    final = tmp_path / "elsewhere" / "tree"
    seen = []

    def produce(tmp: Path) -> None:
        seen.append(tmp)
        (tmp / "bin").mkdir(parents=True)

    assert store.ensure("tree", produce, final) == final and (final / "bin").is_dir()
    assert seen[0].parent == final.parent and seen[0].name == f"tree.tmp-{os.getpid()}"


# ---------------------------------------------------------------------- listing and cleaning


def populate(store: Store) -> dict[str, Path]:
    blob = store.add_blob_from_file
    paths = {}
    src = store.root.parent / "src"
    src.write_bytes(b"blob-old")
    paths["blob-old"] = blob(digest_of(b"blob-old"), src)
    src.write_bytes(b"blob-new")
    paths["blob-new"] = blob(digest_of(b"blob-new"), src)
    with store.sif_writer(digest_of(b"m-old")) as tmp:
        tmp.write_bytes(b"s" * 4096)
    paths["sif-old"] = store.sif_path(digest_of(b"m-old"))
    with store.sif_writer(digest_of(b"m-new")) as tmp:
        tmp.write_bytes(b"s" * 10)
    paths["sif-new"] = store.sif_path(digest_of(b"m-new"))
    tree = store.unpacked / "0123456789abcdef0123456789abcdef"
    (tree / "usr" / "bin").mkdir(parents=True)
    (tree / "usr" / "bin" / "tool").write_bytes(b"#" * 1000)
    os.symlink("usr/bin", tree / "bin")
    os.chmod(tree / "usr" / "bin", 0o555)  # read-only directories, as images have them
    os.chmod(tree / "usr", 0o500)
    paths["unpacked"] = tree
    for name in ("blob-old", "sif-old"):
        age(paths[name], 30)
    age(tree, 30)
    return paths


def test_entries_by_type_with_sizes(store):
    paths = populate(store)
    kinds = [e.kind for e in store.entries()]
    assert kinds == ["blob", "blob", "sif", "sif", "unpacked"]
    (un,) = store.entries("unpacked")
    assert un.path == paths["unpacked"] and un.size == tree_size(paths["unpacked"]) and un.size > 1000
    assert {e.size for e in store.entries("sif")} == {4096, 10}
    old = {e.name for e in store.entries() if e.used < time.time() - 29 * DAY}
    assert old == {digest_of(b"blob-old"), digest_of(b"m-old"), paths["unpacked"].name}
    with pytest.raises(Exception, match="unknown cache entry type"):
        store.entries("layers")


def test_clean_by_type(store):
    paths = populate(store)
    removed = store.clean("sif")
    assert {e.path for e in removed} == {paths["sif-old"], paths["sif-new"]}
    assert not paths["sif-old"].exists() and paths["blob-old"].exists() and paths["unpacked"].exists()
    removed = store.clean("unpacked")
    assert [e.path for e in removed] == [paths["unpacked"]]
    assert os.listdir(store.unpacked) == []


def test_clean_by_age_and_dry_run(store):
    paths = populate(store)
    planned = store.clean(older_than_days=10, dry_run=True)
    assert {e.path for e in planned} == {paths["blob-old"], paths["sif-old"], paths["unpacked"]}
    assert all(p.exists() for p in paths.values())
    removed = store.clean(older_than_days=10)
    assert {e.path for e in removed} == {e.path for e in planned}
    assert [p.exists() for p in paths.values()] == [False, True, False, True, False]
    assert store.clean(older_than_days=10) == []
    assert len(store.clean()) == 2 and store.entries() == []


def test_clean_skips_what_another_process_holds(store):
    paths = populate(store)
    skipped = []
    key = paths["unpacked"].name
    # pull.py's convention: the digest with '-' for ':' locks a blob or SIF while it is worked on.
    assert Store.lock_name(digest_of(b"m-new")) == digest_of(b"m-new").replace(":", "-")
    with store.lock(Store.lock_name(digest_of(b"m-new"))), store.unpacked_lock(key):
        removed = store.clean(skipped=skipped)
    assert {e.path for e in skipped} == {paths["sif-new"], paths["unpacked"]}
    assert paths["sif-new"].exists() and paths["unpacked"].exists()
    assert {e.kind for e in removed} == {"blob", "sif"}
    assert {e.path for e in store.clean()} == {paths["sif-new"], paths["unpacked"]}
    assert os.listdir(store.locks) == []  # unused lock files are swept


def test_clean_removes_abandoned_temporaries_only(store):
    store.unpacked.mkdir(parents=True)
    dead = dead_pid()
    stale_unpack = store.unpacked / f"{'a' * 32}.tmp-{dead}"
    (stale_unpack / "etc").mkdir(parents=True)
    os.chmod(stale_unpack / "etc", 0o500)
    live_unpack = store.unpacked / f"{'b' * 32}.tmp-{os.getpid()}"
    live_unpack.mkdir()
    store.tmp.mkdir(parents=True)
    host = os.uname().nodename
    stale = store.tmp / f"{dead}~{host}~0000~blob-x"
    live = store.tmp / f"{os.getpid()}~{host}~0000~blob-y"
    other_host_recent = store.tmp / f"{dead}~another-node~0000~sif-z"
    other_host_old = store.tmp / f"{dead}~another-node~0001~sif-z"
    for p in (stale, live, other_host_recent, other_host_old):
        p.write_bytes(b"partial")
    age(other_host_old, 2)
    store.blobs.joinpath("sha256").mkdir(parents=True)
    part_old = store.blobs / "sha256" / ".abc.x1y2.part"  # a downloader's own temporary, beside the blob
    part_new = store.blobs / "sha256" / ".abc.z3w4.part"
    for p in (part_old, part_new):
        p.write_bytes(b"partial")
    age(part_old, 2)
    assert store.entries() == []  # temporaries are not entries
    removed = store.clean(older_than_days=100)
    assert {e.path for e in removed} == {stale_unpack, stale, other_host_old, part_old}
    assert {e.kind for e in removed} == {"tmp"}
    assert live_unpack.exists() and live.exists() and other_host_recent.exists() and part_new.exists()
    assert not stale_unpack.exists() and not stale.exists()


@pytest.mark.root
def test_unpacked_dir_not_owned_by_us_is_ignored(store):
    os.makedirs(store.unpacked / "k")
    os.chown(store.local_root, 12345, 12345)  # /var/tmp is world-writable: someone else's directory
    assert store.entries("unpacked") == [] and store.clean("unpacked") == []
    assert (store.unpacked / "k").exists()


def test_force_rmtree_read_only_tree(tmp_path):
    top = tmp_path / "t"
    (top / "a" / "b").mkdir(parents=True)
    (top / "a" / "b" / "f").write_text("x")
    os.chmod(top / "a" / "b", 0o500)
    os.chmod(top / "a", 0o000)
    force_rmtree(top)
    assert not top.exists()


def test_entry_to_dict_is_json(store):
    populate(store)
    data = json.loads(json.dumps([e.to_dict() for e in store.entries()]))
    assert {d["kind"] for d in data} == {"blob", "sif", "unpacked"}
