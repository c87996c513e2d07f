"""The build cache: one entry per build step, so an unchanged recipe rebuilds without running anything.

A step's **key** chains it to everything before it: ``sha256(format, parent key, kind, payload)``,
where the payload is the step's own text plus the digests of what it reads (the files ``%files``
or ``COPY`` copy, the manifest digest of a ``docker://`` base, ...).  Changing a step changes its
key and every key after it, so a build reruns from the first changed step on.

Each entry is a directory ``$YURT_CACHEDIR/build/<key>/``::

    meta.json      parent key, what the step was, when, and data the step produced
                   (labels written by %post, the base image's OCI config, ...)
    layer.tar      what the step changed in the tree, as an OCI-style layer: changed and new
                   files, ``.wh.NAME`` whiteouts for removed ones (absent when nothing changed)
    image-<k>.sif  for the last step of a build: the finished SIF, per packing options ``k``

Why layers and not whole trees: a layer holds only the difference, found by comparing an
``lstat`` of every path (inode, size, mode, owner, mtime and ctime: any write changes ctime)
with the one taken after the previous step, which costs a fraction of a second even for a
Debian tree; it is written by GNU tar.  To continue a build after the last cached step, the
chain's layers are merged (:mod:`yurt.image.layers`, the same code ``yurt pull`` uses) and
unpacked into a fresh sandbox.

In a subuid build the tree belongs to ids the builder cannot read outside the user
namespace, so scanning, writing layers and unpacking run through the build's
:class:`yurt.builder.runner.Runner`; these functions take only paths so they can run in a
forked child.

Entries are written whole or not at all (:meth:`yurt.store.cache.Store.ensure`), listed and
removed by ``yurt cache list/clean --type build``.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import time
from pathlib import Path

from yurt.errors import BuildError
from yurt.programs import require

FORMAT = 1
LAYER = "layer.tar"
META = "meta.json"
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"


def step_key(parent: str | None, kind: str, payload: object) -> str:
    """The key of a step: its parent's key, its kind and its payload (any JSON value)."""
    text = json.dumps([FORMAT, parent, kind, payload], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def tree_digest(path: str, *, follow_links: bool = False) -> str:
    """A digest of a host file or directory tree: names, types, modes, link targets and contents.

    Times are left out on purpose (a fresh checkout of the same files hits the cache), as
    Docker's build cache does.  ``path`` itself is followed if it is a symlink; the links
    inside are followed too with ``follow_links`` (what ``cp -L`` copies).
    """
    h = hashlib.sha256()

    def add(rel: str, full: str, follow: bool) -> None:
        st = os.stat(full) if follow or follow_links else os.lstat(full)
        mode = st.st_mode
        if stat.S_ISLNK(mode):
            h.update(f"L {rel} {os.readlink(full)}\0".encode())
        elif stat.S_ISDIR(mode):
            h.update(f"D {rel} {stat.S_IMODE(mode):o}\0".encode())
            for name in sorted(os.listdir(full)):
                add(f"{rel}/{name}", os.path.join(full, name), False)
        elif stat.S_ISREG(mode):
            h.update(f"F {rel} {stat.S_IMODE(mode):o} {st.st_size} {file_digest(full)}\0".encode())
        else:
            h.update(f"S {rel} {stat.S_IFMT(mode):o} {st.st_rdev}\0".encode())

    try:
        add(".", path, True)
    except OSError as e:
        raise BuildError(f"cannot read {e.filename or path}: {e.strerror}")
    return "sha256:" + h.hexdigest()


# -- snapshots (run through the build's Runner) -------------------------------------------------------


def scan(root: str) -> dict[str, list[int]]:
    """``{relative path: [ino, mode, uid, gid, size, mtime_ns, ctime_ns]}`` for every path under ``root``."""
    out: dict[str, list[int]] = {}
    stack = [("", root)]
    while stack:
        rel, full = stack.pop()
        try:
            it = os.scandir(full)
        except OSError as e:
            raise BuildError(f"cannot read {full} to record the build step: {e.strerror}")
        with it:
            for de in it:
                st = de.stat(follow_symlinks=False)
                path = f"{rel}/{de.name}" if rel else de.name
                out[path] = [st.st_ino, st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
                if stat.S_ISDIR(st.st_mode):
                    stack.append((path, de.path))
    return out


def record_state(root: str, state_path: str) -> None:
    """Scan ``root`` into ``state_path`` (after a restore, or before the first step's snapshot)."""
    _write_json(state_path, scan(root))


def write_layer(root: str, state_path: str, layer_path: str) -> None:
    """Write what changed in ``root`` since ``state_path`` as a layer at ``layer_path`` (nothing when
    nothing changed), and update ``state_path``."""
    try:
        with open(state_path, encoding="utf-8") as f:
            before: dict[str, list[int]] = json.load(f)
    except FileNotFoundError:
        before = {}
    now = scan(root)
    changed = sorted(p for p, v in now.items() if before.get(p) != v)
    gone = [p for p in before if p not in now]
    gone_set = set(gone)
    whiteouts = sorted(p for p in gone if p.rpartition("/")[0] not in gone_set)
    # A directory that was replaced (new inode) hides what the old one held: an opaque marker.
    opaque = sorted(p for p in changed if p in before and stat.S_ISDIR(now[p][1]) and stat.S_ISDIR(before[p][1])
                    and before[p][0] != now[p][0])
    if changed or whiteouts:
        _write_tar(root, layer_path, changed, whiteouts, opaque)
    _write_json(state_path, now)


def _write_tar(root: str, layer_path: str, changed: list[str], whiteouts: list[str], opaque: list[str]) -> None:
    import tarfile

    with open(layer_path, "wb") as out:
        markers = []
        for path in whiteouts:
            parent, _, name = path.rpartition("/")
            markers.append((f"{parent}/" if parent else "") + _WHITEOUT + name)
        markers += [f"{path}/{_OPAQUE}" for path in opaque]
        for name in markers:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            out.write(info.tobuf(format=tarfile.PAX_FORMAT))
        out.flush()
        if not changed:
            out.write(b"\0" * 1024)
            os.fsync(out.fileno())
            return
        listing = "\0".join(changed).encode() + b"\0"
        proc = subprocess.run([require("tar", None, BuildError), "--create", "--file=-", f"--directory={root}",
                               "--no-recursion", "--null",
                               "--files-from=-", "--numeric-owner", "--format=posix", "--xattrs",
                               "--pax-option=delete=atime,delete=ctime"],
                              input=listing, stdout=out, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            message = proc.stderr.decode(errors="replace").strip()[-300:]
            raise BuildError(f"cannot record the build step: tar: {message}")
        os.fsync(out.fileno())


def restore(layer_paths: list[str], dest: str) -> None:
    """Unpack the merged layers into the new directory ``dest`` (owners kept when we are root here)."""
    import tempfile

    from yurt.image.layer_blob import Layer
    from yurt.image.layers import write_merged_tar

    os.mkdir(dest, 0o755)
    owner = ["--same-owner", "--numeric-owner"] if os.geteuid() == 0 else ["--no-same-owner"]
    with tempfile.TemporaryFile() as errors:  # not a pipe: tar's complaints must never block the stream
        tar = require("tar", None, BuildError)
        proc = subprocess.Popen([tar, "--extract", "--file=-", f"--directory={dest}", "--preserve-permissions",
                                 "--xattrs", "--xattrs-include=*", *owner], stdin=subprocess.PIPE, stderr=errors)
        assert proc.stdin is not None
        try:
            write_merged_tar([Layer(path=p) for p in layer_paths], proc.stdin)
            proc.stdin.close()
        except BrokenPipeError:
            pass
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if proc.wait() != 0:
            errors.seek(0)
            message = errors.read().decode(errors="replace").strip()[-300:]
            raise BuildError(f"cannot restore the build cache: tar: {message}")


def _write_json(path: str, doc: object) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, separators=(",", ":"))


# -- the entries --------------------------------------------------------------------------------------


class BuildCache:
    """Step entries in the store; ``read=False`` (``--no-cache``) still writes them, as Docker does."""

    def __init__(self, store=None, *, read: bool = True) -> None:
        from yurt.store.cache import Store

        self.store = store or Store()
        self.read = read
        self.writable = True  # cleared when an entry cannot be written: the build goes on without recording
        self.root = self.store.root / "build"

    def entry(self, key: str) -> Path:
        return self.root / key

    def get(self, key: str) -> dict | None:
        """The meta of a complete entry whose whole chain is still there, else None."""
        if not self.read:
            return None
        meta = self._meta(key)
        if meta is None:
            return None
        parent = meta.get("parent")
        if parent and self._meta(parent) is None:
            return None
        self.store.touch(self.entry(key))
        return meta

    def _meta(self, key: str) -> dict | None:
        try:
            with open(self.entry(key) / META, encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) and meta.get("key") == key else None

    def layers(self, key: str | None) -> list[str]:
        """The layer files of ``key``'s chain, oldest first."""
        out: list[str] = []
        seen = set()
        while key:
            if key in seen:
                raise BuildError(f"the build cache entry {key[:12]} refers to itself; run 'yurt cache clean -T build'")
            seen.add(key)
            meta = self._meta(key)
            if meta is None:
                raise BuildError(f"the build cache entry {key[:12]} disappeared during the build", "build again")
            layer = self.entry(key) / LAYER
            if layer.exists():
                out.append(str(layer))
            key = meta.get("parent")
        return out[::-1]

    def commit(self, key: str, parent: str | None, what: str, fill, extra: dict | None = None) -> None:
        """Create entry ``key``: ``fill(layer_path)`` writes its layer (or nothing), then meta.json."""
        def produce(tmp: Path) -> None:
            os.mkdir(tmp, 0o700)
            fill(str(tmp / LAYER))
            _write_json(str(tmp / META), {"key": key, "parent": parent, "step": what, "created": time.time(),
                                          "extra": extra or {}})
            for name in os.listdir(tmp):
                from yurt.store.atomic import fsync_path

                fsync_path(tmp / name)

        os.makedirs(self.root, mode=0o700, exist_ok=True)
        if os.path.isdir(self.entry(key)) and self._meta(key) is not None:
            return
        self.store.ensure(f"build-{key}", produce, self.entry(key))

    # -- finished images --

    def image_path(self, key: str, pack_key: str) -> Path:
        return self.entry(key) / f"image-{pack_key[:32]}.sif"

    def cached_image(self, key: str, pack_key: str) -> Path | None:
        if not self.read:
            return None
        path = self.image_path(key, pack_key)
        return path if path.is_file() and self._meta(key) is not None else None

    def keep_image(self, key: str, pack_key: str, sif: str) -> None:
        """Copy the finished SIF into the entry of the build's last step (best effort: a cache)."""
        from yurt.store.atomic import copy_file

        final = self.image_path(key, pack_key)
        if not final.parent.is_dir():
            return
        tmp = self.store._tmp_name("build-image")  # in tmp/: a copy cut short is swept by `yurt cache clean`
        try:
            copy_file(sif, tmp, 0o644)
            os.replace(tmp, final)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def copy_out(src: str | os.PathLike[str], out: str) -> None:
    """Copy a cached SIF to ``out`` atomically, with a SIF's mode (as write_sif makes it)."""
    from yurt.store.atomic import copy_file

    copy_file(src, out, 0o755)
