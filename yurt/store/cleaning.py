"""Listing and cleaning the cache: what ``yurt cache list`` shows and ``yurt cache clean`` removes.

:class:`CacheCleaning` is the half of :class:`yurt.store.cache.Store` that walks the cache
instead of writing to it: it lists the entries of each kind (blobs, SIFs, references, build
steps, node-local unpacked trees) with their sizes and last use, and removes them, taking each
entry's lock first so that an image in use is skipped, plus the temporaries that writers which
died left behind and lock files nobody holds.  It is a separate module because nothing on the
pull, build or exec paths needs it; ``Store`` inherits it so that ``store.entries()`` and
``store.clean()`` stay where callers expect them.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from pathlib import Path

from yurt.errors import YurtError
from yurt.record import Record
from yurt.store.files import _ALGORITHMS, _HEX, _mkdirs, _remove, _unlink, force_rmtree
from yurt.store.locks import LocksUnsupported, try_lock

KINDS = ("blob", "sif", "unpacked", "ref", "build")
#: A temporary entry untouched this long is abandoned even if its pid looks alive (pid reuse, other hosts).
STALE_TMP_SECONDS = 24 * 3600
_UNPACK_TMP = re.compile(r"\.tmp-(\d+)(?:-[A-Za-z0-9]+)?\Z")


class Entry(Record):
    """One cache entry.  ``used`` is what ``clean --days`` compares: the later of mtime and atime
    for files, the mtime for directories (listing a tree would otherwise refresh its atime)."""

    __slots__ = ("kind", "name", "path", "size", "mtime", "atime", "used")

    def to_dict(self) -> dict[str, object]:
        return {n: (str(getattr(self, n)) if n == "path" else getattr(self, n)) for n in self.__slots__}


class CacheCleaning:
    """Listing and cleaning, mixed into :class:`yurt.store.cache.Store`, which provides the
    directories below and ``lock_name``, ``_local_ok`` and ``_local_dir``."""

    root: Path
    blobs: Path
    sifs: Path
    refs: Path
    tmp: Path
    locks: Path
    local_root: Path
    unpacked: Path

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


# ---------------------------------------------------------------------- helpers


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise YurtError(f"unknown cache entry type {kind!r}", "one of " + ", ".join(KINDS))
    return kind


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
