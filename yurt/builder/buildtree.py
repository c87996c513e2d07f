"""A stage's sandbox kept in step with the build cache, and turning the last one into OUT.

Both recipe formats build stage by stage into a :class:`Tree`: each step is looked up in
the build cache (:mod:`yurt.builder.cache`) by a key chaining its parent's, and runs only
when it is missing.  :class:`BuildState` is what a tree and :func:`finish` need of a build,
whatever its recipe: the definition-file build (:mod:`yurt.builder.executor`) and the
Dockerfile build (:mod:`yurt.builder.dockerbuild`) extend it with their own steps.
"""

from __future__ import annotations

import errno
import os

from yurt.builder.agents import copy_tree
from yurt.builder.runner import SINGLE, SUBUID, Runner, _say
from yurt.errors import BuildError, YurtError, warn


class Tree:
    """One stage's sandbox, kept in step with the build cache.

    A step whose key is cached is not run: the tree only falls behind.  When a step must
    really run, the tree is first brought up to date by unpacking the cached layers
    (:func:`yurt.builder.cache.restore`); after it runs, what it changed is recorded as its
    entry's layer.  So an unchanged recipe runs nothing, and a changed late step reruns
    only from there.
    """

    def __init__(self, build: BuildState, path: str, label: str) -> None:
        self.build = build
        self.path = path
        self.label = label
        self.key: str | None = None
        self.state = os.path.join(build.ctl, f"{os.path.basename(path)}.state")
        self.current = False  # the directory holds the state of self.key

    def step(self, kind: str, payload: object, what: str, action) -> dict:
        """Run ``action()`` (it returns the step's produced data, a dict, or None) unless cached."""
        from yurt.builder import cache

        b = self.build
        key = cache.step_key(self.key, kind, payload)
        meta = b.cache.get(key) if b.cache is not None else None
        if meta is not None:
            _say(f"{self.label}{what}: cached")
            self.key, self.current = key, False
            return dict(meta.get("extra") or {})
        _say(f"{self.label}{what}")
        self.materialize()
        extra = action() or {}
        if b.cache is not None and b.cache.writable:
            try:
                b.cache.commit(key, self.key, what, lambda layer: b.runner.as_root(cache.write_layer, self.path,
                                                                                  self.state, layer), extra)
            except (YurtError, OSError) as e:
                # What is cached stays usable (trees behind can still be restored); nothing more is written.
                warn(f"the build cache records no more steps of this build: {e}")
                b.cache.writable = False
        self.key, self.current = key, True
        return extra

    def materialize(self) -> None:
        """Make the directory hold the state of ``self.key`` (nothing to do before the first step)."""
        from yurt.builder import cache

        if self.current or self.key is None:
            return
        b = self.build
        if os.path.lexists(self.path):
            b.runner.remove(self.path)
        _say(f"{self.label}restoring the cached steps")
        b.runner.as_root(cache.restore, b.cache.layers(self.key), self.path)
        if b.cache.writable:
            b.runner.as_root(cache.record_state, self.path, self.state)
        self.current = True


class BuildState:
    """What :class:`Tree` and :func:`finish` need of a build, whatever its recipe format: who is root
    (``runner``), where it works (``work``, ``ctl``), the cache, and the result's labels and OCI config."""

    def __init__(self, runner: Runner, work: str, ctl: str, pull_options, build_cache) -> None:
        self.runner = runner
        self.work = work
        self.ctl = ctl
        self.pull_options = pull_options
        self.cache = build_cache
        self.labels: dict[str, str] = {}
        self.oci_config: dict | None = None

def finish(b: BuildState, last: Tree, out: str, *, sandbox: bool, compression: str, mksquashfs_args,
           deffile: bytes | None) -> None:
    """Turn the last stage's tree into OUT: a sandbox directory, or a SIF (from the cache when it has it)."""
    from yurt.builder import cache

    runner = b.runner
    if sandbox:
        last.materialize()
        _say(f"moving the sandbox to {out}")
        _place_sandbox(runner, last.path, out)
        return
    deffile_text = (deffile or b"").decode("utf-8", "replace")
    pack_key = cache.step_key(last.key, "pack", {
        "compression": compression, "args": list(mksquashfs_args),
        "deffile": cache.step_key(None, "text", deffile_text), "labels": b.labels, "oci": b.oci_config,
        "all_root": runner.mode == SINGLE, "epoch": os.environ.get("SOURCE_DATE_EPOCH")})
    cached = b.cache.cached_image(last.key, pack_key) if b.cache is not None and last.key else None
    if cached is not None:
        _say(f"the SIF is cached: copying it to {out}")
        cache.copy_out(cached, out)
        return
    last.materialize()
    _say(f"creating the SIF ({compression})")
    from yurt.image import pack

    runner.call(pack.build_sif, last.path, out, compression=compression, mksquashfs_args=list(mksquashfs_args),
                deffile=deffile, labels=b.labels, oci_config=b.oci_config, all_root=runner.mode == SINGLE)
    if b.cache is not None and b.cache.writable and last.key:
        b.cache.keep_image(last.key, pack_key, out)


def _place_sandbox(runner: Runner, src: str, out: str) -> None:
    try:
        os.rename(src, out)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM) and runner.mode == SUBUID:
            # A build with steps, from an image whose / is not root's (a SIF built rootless records the
            # builder's id): under the build's id map the tree's top directory belongs to an id of the
            # subuid range, and moving a directory to another parent rewrites its '..', which takes write
            # access to it: only the build's root has that.  (A plain conversion, nothing run, has no
            # map: its tree is the user's, see yurt.builder.runner.detect_mode.)
            runner.call(_rename, src, out)
            return
        if e.errno != errno.EXDEV:
            raise BuildError(f"cannot move the sandbox to {out}: {e.strerror}")
        runner.call(copy_tree, ["cp", "-a", "--", src, out], f"copying the sandbox to {out}")


def _rename(src: str, out: str) -> None:
    try:
        os.rename(src, out)
    except OSError as e:
        raise BuildError(f"cannot move the sandbox to {out}: {e.strerror}")
