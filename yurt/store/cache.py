"""The user's image cache: content-addressed blobs, converted SIFs and resolved references.

Layout under ``$YURT_CACHEDIR`` (default: ``cache_dir`` in the config, else ``~/.cache/yurt``; mode 0700)::

    blobs/sha256/<hex>          registry blobs, named by the digest of their content
    sif/<hex>.sif               images converted to SIF, named by their manifest digest
    refs/<sha256(ref)>.json     last manifest digest a reference (docker://x:tag) resolved to
    build/<key>/                one build step: its layer and meta (see :mod:`yurt.builder.cache`)
    tmp/                        files being written (same filesystem: renames are atomic)
    locks/<name>.lock           flock(2) files serialising work on one entry

plus, node-local, the unpacked-SIF cache of :class:`yurt.image.rootfs.ExtractedSquashfs`
under ``$YURT_LOCAL_CACHEDIR`` (default: ``local_cache_dir`` in the config, else ``/var/tmp/yurt-<uid>``)::

    unpacked/<key>              extracted image trees (``<key>.tmp-<pid>`` while unpacking)
    locks/unpacked-<key>.lock   held (shared) by users of a tree, so ``clean`` leaves it alone

Every entry appears whole or not at all: it is written under ``tmp/`` (or as a
``.tmp-<pid>`` sibling), fsynced and renamed into place.  :meth:`Store.ensure`
adds a per-entry lock so that when all the MPI ranks of a node ask for the same
image at once, one produces it and the others wait and reuse it.  Temporary
names carry the writer's pid (and host), so ``clean`` can tell abandoned ones.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from yurt.errors import ImageError, RuntimeSetupError, YurtError
from yurt.record import Record
from yurt.store.atomic import fsync_path
from yurt.store.locks import LocksUnsupported, acquire, try_lock
from yurt.store.userdir import own_dir, peek

KINDS = ("blob", "sif", "unpacked", "ref", "build")
#: A temporary entry untouched this long is abandoned even if its pid looks alive (pid reuse, other hosts).
STALE_TMP_SECONDS = 24 * 3600
_ALGORITHMS = {"sha256": 64, "sha512": 128}
_HEX = frozenset("0123456789abcdef")
_LOCK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}\Z")
_UNPACK_TMP = re.compile(r"\.tmp-(\d+)(?:-[A-Za-z0-9]+)?\Z")
_COPY_CHUNK = 1 << 20


def parse_digest(digest: str) -> tuple[str, str]:
    """``"sha256:<hex>"`` -> ``("sha256", "<hex>")``; anything else (``../``, upper case) is refused."""
    algorithm, sep, hexpart = str(digest).partition(":")
    if not sep or _ALGORITHMS.get(algorithm) != len(hexpart) or not _HEX.issuperset(hexpart):
        raise ImageError(f"invalid digest {digest!r}", "expected sha256:<64 lower-case hex digits>")
    return algorithm, hexpart


def default_root() -> Path:
    """``$YURT_CACHEDIR``, else ``cache_dir`` of the user or site config, else ``~/.cache/yurt``."""
    from yurt.config import load

    return Path(load().cache_dir)


def default_local_root() -> Path:
    """``$YURT_LOCAL_CACHEDIR``, else ``local_cache_dir`` of the config, else ``/var/tmp/yurt-<uid>``."""
    from yurt.config import load

    return Path(load().local_cache_dir)


class Entry(Record):
    """One cache entry.  ``used`` is what ``clean --days`` compares: the later of mtime and atime
    for files, the mtime for directories (listing a tree would otherwise refresh its atime)."""

    __slots__ = ("kind", "name", "path", "size", "mtime", "atime", "used")

    def to_dict(self) -> dict[str, object]:
        return {n: (str(getattr(self, n)) if n == "path" else getattr(self, n)) for n in self.__slots__}


class Store:
    def __init__(self, root: str | os.PathLike[str] | None = None,
                 local_root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).absolute() if root is not None else default_root()
        # A /var/tmp/yurt-<uid> another user planted is never used (yurt.store.userdir): its fallback is.
        self.local_root = Path(peek(str(Path(local_root).absolute() if local_root is not None
                                        else default_local_root())))
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        if not self.root.is_dir():
            raise RuntimeSetupError(f"cache directory {self.root} is not a directory", "check YURT_CACHEDIR")
        self.blobs = self.root / "blobs"
        self.sifs = self.root / "sif"
        self.refs = self.root / "refs"
        self.tmp = self.root / "tmp"
        self.locks = self.root / "locks"
        self.unpacked = self.local_root / "unpacked"

    # ------------------------------------------------------------------ blobs

    def blob_path(self, digest: str) -> Path:
        """Where blob ``digest`` lives (its directory is created: writers may put temp files beside it)."""
        algorithm, hexpart = parse_digest(digest)
        return _mkdirs(self.blobs / algorithm) / hexpart

    def has_blob(self, digest: str, size: int | None = None) -> bool:
        try:
            st = os.stat(self.blob_path(digest))
        except FileNotFoundError:
            return False
        return stat.S_ISREG(st.st_mode) and (size is None or st.st_size == size)

    @staticmethod
    def lock_name(digest: str) -> str:
        """The lock of the blob or SIF named by ``digest``: ``sha256-<hex>`` (what ``clean`` checks)."""
        algorithm, hexpart = parse_digest(digest)
        return f"{algorithm}-{hexpart}"

    @contextmanager
    def blob_writer(self, digest: str) -> Iterator[Path]:
        """Yield an empty temporary file to fill; on success it is verified against ``digest``
        (:class:`ImageError` if it differs), fsynced and renamed into place.  On any error it is removed."""
        final = self.blob_path(digest)
        tmp = self._reserve_tmp(f"blob-{final.name[:16]}")
        try:
            yield tmp
            _verify(tmp, digest)
            self._commit(tmp, final, readonly=True)
        except BaseException:
            _remove(tmp)
            raise

    def add_blob_from_file(self, digest: str, src_path: str | os.PathLike[str]) -> Path:
        """Copy ``src_path`` into the store, hashing while copying; refuse it if the digest differs."""
        final = self.blob_path(digest)
        if self.has_blob(digest):
            return final
        algorithm, expected = parse_digest(digest)
        tmp = self._reserve_tmp(f"blob-{expected[:16]}")
        try:
            h = hashlib.new(algorithm)
            with open(src_path, "rb") as fin, open(tmp, "wb") as fout:
                while chunk := fin.read(_COPY_CHUNK):
                    h.update(chunk)
                    fout.write(chunk)
            if h.hexdigest() != expected:
                raise ImageError(f"{src_path} does not match {digest} (its content is {algorithm}:{h.hexdigest()})")
            self._commit(tmp, final, readonly=True)
        except BaseException:
            _remove(tmp)
            raise
        return final

    def commit_blob(self, digest: str, tmp_path: str | os.PathLike[str]) -> Path:
        """Move an already verified file into place (fsync + rename; a copy if it is on another filesystem)."""
        final = self.blob_path(digest)
        self._commit(Path(tmp_path), final, readonly=True)
        return final

    def ensure_blob(self, digest: str, produce: Callable[[Path], None], *, timeout: float | None = None) -> Path:
        """:meth:`ensure` for a blob: ``produce`` writes it (e.g. downloads) and it is verified."""
        return self.ensure(self.lock_name(digest), produce, self.blob_path(digest), timeout=timeout,
                           verify=digest, readonly=True)

    # ------------------------------------------------------------------ SIFs

    def sif_path(self, manifest_digest: str) -> Path:
        algorithm, hexpart = parse_digest(manifest_digest)
        return _mkdirs(self.sifs) / (f"{hexpart}.sif" if algorithm == "sha256" else f"{algorithm}-{hexpart}.sif")

    def has_sif(self, manifest_digest: str) -> bool:
        return self.sif_path(manifest_digest).is_file()

    @contextmanager
    def sif_writer(self, manifest_digest: str) -> Iterator[Path]:
        """Like :meth:`blob_writer` without a content check (a SIF is not named by its own digest)."""
        final = self.sif_path(manifest_digest)
        tmp = self._reserve_tmp(f"sif-{final.name[:16]}")
        try:
            yield tmp
            self._commit(tmp, final, readonly=True)
        except BaseException:
            _remove(tmp)
            raise

    def ensure_sif(self, manifest_digest: str, produce: Callable[[Path], None], *,
                   timeout: float | None = None) -> Path:
        """:meth:`ensure` for a converted image: exactly one process converts, the others reuse."""
        return self.ensure(self.lock_name(manifest_digest), produce, self.sif_path(manifest_digest),
                           timeout=timeout, readonly=True)

    # ------------------------------------------------------------------ references

    def _ref_path(self, reference: str) -> Path:
        return self.refs / (hashlib.sha256(reference.encode()).hexdigest() + ".json")

    def get_ref(self, reference: str) -> dict | None:
        """What :meth:`set_ref` stored for ``reference``: ``{"reference", "digest", "time", **extra}``."""
        try:
            data = json.loads(self._ref_path(reference).read_bytes())
        except (OSError, ValueError, RecursionError):
            return None
        if not isinstance(data, dict) or data.get("reference") != reference:
            return None
        return data

    def set_ref(self, reference: str, manifest_digest: str, extra: dict | None = None) -> None:
        parse_digest(manifest_digest)
        data = dict(extra or {})
        data.update(reference=reference, digest=manifest_digest, time=time.time())
        tmp = self._reserve_tmp("ref")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f, sort_keys=True)
                f.write("\n")
            self._commit(tmp, self._ref_path(reference), readonly=False)
        except BaseException:
            _remove(tmp)
            raise

    # ------------------------------------------------------------------ locks and exactly-once

    @contextmanager
    def lock(self, name: str, *, shared: bool = False, timeout: float | None = None,
             what: str | None = None) -> Iterator[int]:
        """Hold ``locks/<name>.lock``; on a filesystem without ``flock`` (some NFS/Lustre set-ups)
        fall back to a node-local lock: then only processes on the same node are serialised."""
        if not _LOCK_NAME.match(name):
            raise ValueError(f"bad lock name {name!r}")
        what = what or name
        try:
            fd = acquire(_mkdirs(self.locks) / f"{name}.lock", shared=shared, timeout=timeout, what=what)
        except LocksUnsupported:
            fd = acquire(self._local_dir("locks") / f"{name}.lock", shared=shared, timeout=timeout, what=what)
        try:
            yield fd
        finally:
            os.close(fd)

    @contextmanager
    def unpacked_lock(self, key: str, *, shared: bool = True, timeout: float | None = None) -> Iterator[int]:
        """Lock of ``unpacked/<key>``: hold it shared while a container uses the tree (an inheritable
        copy of the fd keeps it for the container's life) so that ``clean`` skips it."""
        if not _LOCK_NAME.match(key):
            raise ValueError(f"bad unpacked key {key!r}")
        fd = acquire(self._local_dir("locks") / f"unpacked-{key}.lock", shared=shared, timeout=timeout,
                     what=f"unpacked image {key}")
        try:
            yield fd
        finally:
            os.close(fd)

    def ensure(self, key: str, produce: Callable[[Path], None], final_path: str | os.PathLike[str], *,
               timeout: float | None = None, verify: str | None = None, readonly: bool = False) -> Path:
        """Return ``final_path``, calling ``produce(tmp_path)`` exactly once among concurrent callers.

        Without waiting when it already exists; otherwise under lock ``key``: the first caller
        runs ``produce`` (which creates a file or directory at ``tmp_path``), the result is
        (checked against ``verify``, a digest, if given,) fsynced and renamed to ``final_path``;
        the others wait and find it there.  If ``produce`` fails, or the process dies, nothing
        appears at ``final_path`` and the lock is free again.
        """
        final = Path(final_path).absolute()
        if os.path.lexists(final):
            return final
        with self.lock(key, timeout=timeout, what=final.name):
            if os.path.lexists(final):
                return final
            tmp = self._tmp_for(final)
            try:
                produce(tmp)
                if not os.path.lexists(tmp):
                    raise YurtError(f"nothing was produced for {final}")
                if verify is not None:
                    _verify(tmp, verify)
                self._commit(tmp, final, readonly=readonly)
            except BaseException:
                _remove(tmp)
                raise
        return final

    @staticmethod
    def touch(path: str | os.PathLike[str]) -> None:
        """Mark an entry as used now (``clean --days`` keeps it); best effort."""
        try:
            os.utime(path)
        except OSError:
            pass

    # ------------------------------------------------------------------ listing and cleaning

    def entries(self, kind: str | None = None) -> list[Entry]:
        kinds = KINDS if kind is None else (_check_kind(kind),)
        found: list[Entry] = []
        for k in kinds:
            found.extend(getattr(self, f"_list_{k}")())
        return found

    def clean(self, kind: str | None = None, older_than_days: float | None = None, dry_run: bool = False,
              skipped: list[Entry] | None = None) -> list[Entry]:
        """Remove entries (of ``kind``, unused for ``older_than_days``) and abandoned temporaries;
        return what was (with ``dry_run``: would be) removed.  Entries whose lock another process
        holds are left alone and appended to ``skipped``.  Abandoned temporaries (kind ``"tmp"``)
        go whatever ``older_than_days`` says."""
        if kind is not None:
            _check_kind(kind)
        cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
        removed: list[Entry] = []
        for entry in self.entries(kind):
            if cutoff is not None and entry.used > cutoff:
                continue
            lock_path = self._entry_lock_path(entry)
            if dry_run and not os.path.exists(lock_path):
                removed.append(entry)  # nobody can hold a lock file that does not exist
                continue
            fd = self._try_lock_path(lock_path)
            if fd is None:
                if skipped is not None:
                    skipped.append(entry)
                continue
            try:
                if not dry_run:
                    self._remove_entry(entry)
                    _unlink(lock_path)  # safe while we hold it: see yurt.store.locks
                removed.append(entry)
            finally:
                os.close(fd)
        removed.extend(self._stale_temps(kind, dry_run))
        if not dry_run:
            self._sweep_locks()
        return removed

    # ------------------------------------------------------------------ internals: listing

    def _list_blob(self) -> list[Entry]:
        out = []
        for algorithm, length in _ALGORITHMS.items():
            for de in _scandir(self.blobs / algorithm):
                if len(de.name) == length and _HEX.issuperset(de.name) and de.is_file(follow_symlinks=False):
                    out.append(_entry("blob", f"{algorithm}:{de.name}", Path(de.path)))
        return [e for e in out if e is not None]

    def _list_sif(self) -> list[Entry]:
        out = []
        for de in _scandir(self.sifs):
            stem = de.name[:-4] if de.name.endswith(".sif") else ""
            algorithm, _, hexpart = stem.rpartition("-")
            algorithm = algorithm or "sha256"
            if _ALGORITHMS.get(algorithm) == len(hexpart) and _HEX.issuperset(hexpart) \
                    and de.is_file(follow_symlinks=False):
                out.append(_entry("sif", f"{algorithm}:{hexpart}", Path(de.path)))
        return [e for e in out if e is not None]

    def _list_ref(self) -> list[Entry]:
        out = []
        for de in _scandir(self.refs):
            if not (de.name.endswith(".json") and de.is_file(follow_symlinks=False)):
                continue
            try:
                data = json.loads(Path(de.path).read_bytes())
                name = f"{data['reference']} -> {data['digest']}"
            except (OSError, ValueError, TypeError, KeyError, RecursionError):
                name = de.name
            out.append(_entry("ref", name, Path(de.path)))
        return [e for e in out if e is not None]

    def _list_build(self) -> list[Entry]:
        out = []
        for de in _scandir(self.root / "build"):
            if len(de.name) == 64 and _HEX.issuperset(de.name) and de.is_dir(follow_symlinks=False):
                out.append(_entry("build", de.name, Path(de.path), tree=True))
        return [e for e in out if e is not None]

    def _list_unpacked(self) -> list[Entry]:
        if not self._local_ok():
            return []
        out = []
        for de in _scandir(self.unpacked):
            if _UNPACK_TMP.search(de.name) or not de.is_dir(follow_symlinks=False):
                continue
            out.append(_entry("unpacked", de.name, Path(de.path), tree=True))
        return [e for e in out if e is not None]

    # ------------------------------------------------------------------ internals: cleaning

    def _entry_lock_path(self, entry: Entry) -> Path:
        if entry.kind == "unpacked":
            return self.local_root / "locks" / f"unpacked-{entry.path.name}.lock"
        if entry.kind == "build":
            return self.locks / f"build-{entry.name}.lock"
        name = self.lock_name(entry.name) if entry.kind in ("blob", "sif") else f"ref-{entry.path.stem}"
        return self.locks / f"{name}.lock"

    def _try_lock_path(self, path: Path) -> int | None:
        try:
            _mkdirs(path.parent)
            return try_lock(path)
        except LocksUnsupported:
            if path.parent == self.locks:
                return self._try_lock_path(self._local_dir("locks") / path.name)
            raise

    def _remove_entry(self, entry: Entry) -> None:
        if entry.kind == "build":
            doomed = self.tmp / f"{os.getpid()}~{os.uname().nodename}~{os.urandom(4).hex()}~build-rm"
            try:
                _mkdirs(self.tmp)
                os.rename(entry.path, doomed)  # a build sees the entry whole or not at all
            except FileNotFoundError:
                return
            force_rmtree(doomed)
            return
        if entry.kind != "unpacked":
            _unlink(entry.path)
            return
        # Rename first: a reader sees the whole tree or none of it, and a removal cut short
        # leaves a '.tmp-<pid>' that the next clean finishes.
        doomed = entry.path.with_name(f"{entry.path.name}.tmp-{os.getpid()}-rm")
        try:
            os.rename(entry.path, doomed)
        except FileNotFoundError:
            return
        force_rmtree(doomed)

    def _stale_temps(self, kind: str | None, dry_run: bool) -> list[Entry]:
        found: list[Entry] = []
        now = time.time()
        if kind in (None, "blob", "sif", "ref", "build"):
            host = os.uname().nodename
            for de in _scandir(self.tmp):
                entry = _entry("tmp", de.name, Path(de.path), tree=de.is_dir(follow_symlinks=False))
                if entry is None:
                    continue
                pid, _, rest = de.name.partition("~")
                their_host = rest.partition("~")[0]
                abandoned = now - entry.mtime > STALE_TMP_SECONDS
                if not abandoned and pid.isdigit() and their_host == host:
                    abandoned = not pid_alive(int(pid))
                if abandoned:
                    found.append(entry)
            # Temporaries other writers put beside the entries (".<name>.XXXX.part"): no pid to check.
            for directory in [*(self.blobs / a for a in _ALGORITHMS), self.sifs]:
                for de in _scandir(directory):
                    if de.name.startswith(".") and de.is_file(follow_symlinks=False):
                        entry = _entry("tmp", de.name, Path(de.path))
                        if entry is not None and now - entry.mtime > STALE_TMP_SECONDS:
                            found.append(entry)
        if kind in (None, "unpacked") and self._local_ok():
            for de in _scandir(self.unpacked):
                m = _UNPACK_TMP.search(de.name)
                if not m:
                    continue
                entry = _entry("tmp", de.name, Path(de.path), tree=de.is_dir(follow_symlinks=False))
                if entry is not None and (not pid_alive(int(m.group(1))) or now - entry.mtime > STALE_TMP_SECONDS):
                    found.append(entry)
        if not dry_run:
            for entry in found:
                _remove(entry.path)
        return found

    def _sweep_locks(self) -> None:
        """Delete lock files nobody holds (one per image ever used would pile up otherwise)."""
        dirs = [self.locks] + ([self.local_root / "locks"] if self._local_ok() else [])
        for directory in dirs:
            for de in _scandir(directory):
                if not de.name.endswith(".lock") or not de.is_file(follow_symlinks=False):
                    continue
                try:
                    fd = try_lock(de.path)
                except (LocksUnsupported, OSError):
                    continue
                if fd is not None:
                    _unlink(de.path)
                    os.close(fd)

    # ------------------------------------------------------------------ internals: writing

    def _tmp_name(self, label: str) -> Path:
        # pid~host~random~label: clean removes it once that pid is gone from this host.
        return _mkdirs(self.tmp) / f"{os.getpid()}~{os.uname().nodename}~{os.urandom(4).hex()}~{label}"

    def _reserve_tmp(self, label: str) -> Path:
        path = self._tmp_name(label)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
        return path

    def _tmp_for(self, final: Path) -> Path:
        """A temporary name on the same filesystem as ``final`` (not created)."""
        if final.is_relative_to(self.root):
            return self._tmp_name(final.name[:40])
        tmp = _mkdirs(final.parent) / f"{final.name}.tmp-{os.getpid()}"
        _remove(tmp)  # left over by an earlier failure of this very process
        return tmp

    def _commit(self, tmp: Path, final: Path, *, readonly: bool) -> None:
        st = os.lstat(tmp)
        if stat.S_ISREG(st.st_mode):
            fsync_path(tmp)
            if readonly:
                os.chmod(tmp, stat.S_IMODE(st.st_mode) & 0o555)
        _mkdirs(final.parent)
        try:
            os.rename(tmp, final)
        except OSError as e:
            if e.errno == errno.EXDEV and stat.S_ISREG(st.st_mode):
                self._copy_in(tmp, final)
            elif e.errno in (errno.ENOTEMPTY, errno.EEXIST) and os.path.lexists(final):
                _remove(tmp)  # a directory another writer (without our lock) finished first: same content
            else:
                raise
        fsync_path(final.parent)

    def _copy_in(self, src: Path, final: Path) -> None:
        tmp = self._tmp_name(final.name[:40])
        try:
            shutil.copy2(src, tmp)
            fsync_path(tmp)
            os.rename(tmp, final)
        except BaseException:
            _remove(tmp)
            raise
        _unlink(src)

    def _local_ok(self) -> bool:
        """Whether the node-local directory exists and is ours (``/var/tmp`` is world-writable)."""
        try:
            st = os.lstat(self.local_root)
        except FileNotFoundError:
            return False
        return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()

    def _local_dir(self, sub: str) -> Path:
        root = Path(own_dir(str(self.local_root), "set YURT_LOCAL_CACHEDIR to a private node-local directory"))
        if root != self.local_root:  # planted by someone else: from now on, our private fallback
            self.local_root, self.unpacked = root, root / "unpacked"
        return _mkdirs(self.local_root / sub)


# ---------------------------------------------------------------------- helpers


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise YurtError(f"unknown cache entry type {kind!r}", "one of " + ", ".join(KINDS))
    return kind


def _mkdirs(path: Path) -> Path:
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def _scandir(path: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda de: de.name)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _entry(kind: str, name: str, path: Path, *, tree: bool = False) -> Entry | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:  # removed while we looked
        return None
    size = tree_size(path) if tree else st.st_size
    used = st.st_mtime if tree else max(st.st_mtime, st.st_atime)
    return Entry(kind=kind, name=name, path=path, size=size, mtime=st.st_mtime, atime=st.st_atime, used=used)


def tree_size(path: str | os.PathLike[str]) -> int:
    """Bytes in a directory tree (like ``du -sb``: hard links counted once, symlinks not followed)."""
    total = os.lstat(path).st_size
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def force_rmtree(path: str | os.PathLike[str]) -> None:
    """``rm -rf`` that also gets through read-only directories (unpacked images have them)."""
    path = os.fspath(path)

    def writable(p: str) -> None:
        try:
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o700 != 0o700:
                os.chmod(p, stat.S_IMODE(st.st_mode) | 0o700)
        except OSError:
            pass

    writable(path)
    for dirpath, dirnames, _ in os.walk(path):
        for name in dirnames:  # before os.walk descends into them
            writable(os.path.join(dirpath, name))
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        shutil.rmtree(path)  # once more, to raise with the reason


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _verify(path: Path, digest: str) -> None:
    algorithm, expected = parse_digest(digest)
    with open(path, "rb") as f:
        actual = hashlib.file_digest(f, algorithm).hexdigest()
    if actual != expected:
        raise ImageError(f"content does not match {digest} (got {algorithm}:{actual})",
                         "the download is corrupt or the registry sent something else")


def _unlink(path: str | os.PathLike[str]) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _remove(path: str | os.PathLike[str]) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        force_rmtree(path)
    else:
        _unlink(path)
