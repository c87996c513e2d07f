"""The user's image cache: content-addressed blobs, converted SIFs and resolved references.

The user can write all of it, so under a site policy nothing here is run or trusted as it is: blobs
are copied out and checked (:mod:`yurt.store.memcopy`, :mod:`yurt.registry.private`).

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

Listing and cleaning (``yurt cache list|clean``) are :class:`yurt.store.cleaning.CacheCleaning`,
which ``Store`` inherits; the digest and file helpers both use are in :mod:`yurt.store.files`.
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
from yurt.store.atomic import fsync_path
from yurt.store.cleaning import CacheCleaning
from yurt.store.files import _mkdirs, _remove, _unlink, parse_digest
from yurt.store.locks import LocksUnsupported, acquire
from yurt.store.userdir import own_dir, peek

_LOCK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}\Z")
_COPY_CHUNK = 1 << 20


def default_root() -> Path:
    """``$YURT_CACHEDIR``, else ``cache_dir`` of the user or site config, else ``~/.cache/yurt``."""
    from yurt.config import load

    return Path(load().cache_dir)


def default_local_root() -> Path:
    """``$YURT_LOCAL_CACHEDIR``, else ``local_cache_dir`` of the config, else ``/var/tmp/yurt-<uid>``."""
    from yurt.config import load

    return Path(load().local_cache_dir)



class Store(CacheCleaning):
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


def _verify(path: Path, digest: str) -> None:
    algorithm, expected = parse_digest(digest)
    with open(path, "rb") as f:
        actual = hashlib.file_digest(f, algorithm).hexdigest()
    if actual != expected:
        raise ImageError(f"content does not match {digest} (got {algorithm}:{actual})",
                         "the download is corrupt or the registry sent something else")

