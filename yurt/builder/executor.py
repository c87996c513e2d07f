"""``yurt build OUT RECIPE.def``: run a definition file, stage by stage, and pack the result.

For each stage, in Apptainer's order (``[A] internal/pkg/build/build.go``):

1. bootstrap (:mod:`yurt.builder.agents`) into a fresh sandbox directory;
2. ``%files from STAGE``: copies out of an earlier stage's sandbox, both paths resolved
   inside their roots (:func:`yurt.runtime.paths.resolve_in_root`);
3. ``%setup`` on the host, ``/bin/sh -e``, with ``$APPTAINER_ROOTFS`` (and
   ``$SINGULARITY_ROOTFS``, ``$YURT_ROOTFS``) set to the sandbox;
4. ``%files`` (and ``%appfiles``) from the host, relative to the recipe's directory;
5. the base layout (:func:`yurt.builder.layout.prepare_base`), then ``%post`` (and each
   ``%appinstall``) *inside* the container, through the real launcher: ``/bin/sh -e
   /.post.script`` (``%post -c INTERP`` picks another shell), writable, as (fake) root,
   with a clean environment, ``$APPTAINER_ENVIRONMENT`` and ``$APPTAINER_LABELS``;
6. the metadata (:func:`yurt.builder.layout.write_metadata`), then ``%test`` read-only as
   the user unless ``--notest``.

The last stage becomes a SIF (:func:`yurt.image.pack.build_sif`) or, with ``--sandbox``,
is renamed to OUT.  Sandboxes live in a temporary directory next to OUT (or in
``$YURT_TMPDIR``) that is removed at the end, whatever happens.

Who is root during the build:

* **real root**: no user namespace at all.
* **a subuid range** (``/etc/subuid`` and ``newuidmap``): a user namespace mapping 0 to
  the builder and 1..N to the range, so ``chown`` really works.  Files then belong to
  ids the builder cannot touch outside, so every host-side step that writes the tree
  (unpacking, ``%setup``, ``%files``, packing, removal) runs in a user namespace with
  the same map.
* **one id** (no range, or ``YURT_BUILD_IGNORE_SUBUID=1``): 0 inside is the builder;
  ``chown``/``mknod``/``set*id`` are faked by a seccomp filter, apt gets
  ``APT::Sandbox::User "root"``, and the image is packed with every file owned by root.
"""

from __future__ import annotations

import errno
import glob
import os
import signal
import sys
import tempfile

from yurt.builder import agents, layout
from yurt.builder.agents import copy_tree
from yurt.errors import BuildError, ImageError, Interrupted, YurtError, warn
from yurt.runtime.paths import EscapeError, host_path, resolve_in_root

ROOT, SUBUID, SINGLE = "root", "subuid", "single"
POST_SCRIPT = "/.post.script"
APT_CONF = "/.yurt-apt.conf"
APT_SANDBOX = 'APT::Sandbox::User "root";\n'


def _say(message: str) -> None:
    if os.environ.get("YURT_QUIET") not in ("1", "true", "yes"):
        sys.stderr.write(f"yurt: build: {message}\n")
        sys.stderr.flush()


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes", "on")


# -- running host-side steps as the build's root ----------------------------------------------------


def _exit_text(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    return f"killed by signal {-code}" if code < 0 else f"exit status {code}"


def _wait(pid: int) -> int:
    """Wait for a child and return its wait status.

    On Ctrl-C (which the child, in the same process group, gets too) or SIGTERM (made a
    KeyboardInterrupt by :func:`in_workspace`) the child is stopped and waited for, then the
    KeyboardInterrupt goes on (:func:`_stop_and_reap`).
    """
    try:
        return os.waitpid(pid, 0)[1]
    except KeyboardInterrupt:
        _stop_and_reap(pid)
        raise


def _stop_and_reap(pid: int) -> None:
    """After an interrupt: SIGTERM the child ``pid`` if it still runs, and reap it.

    Python raises KeyboardInterrupt at the first bytecode after the signal arrived, which
    can be just *after* a ``waitpid`` reaped the child (the child got the same Ctrl-C and
    exited first) and before its status reached the caller.  A second blocking ``waitpid``
    then failed with ECHILD ("No child processes") instead of the build saying it was
    interrupted.  So look first, without blocking: ECHILD means the child is already gone;
    a child not yet reaped (running or a zombie) still holds its pid, so signalling it
    cannot hit another process.  A further Ctrl-C while waiting only waits again.
    """
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
            return
        except ChildProcessError:
            return
        except KeyboardInterrupt:
            continue


class Runner:
    """Runs Python functions and commands that write the image tree, as the build's root.

    In ``subuid`` mode they run in a forked child that entered a user namespace with the
    build's id map (made by ``newuidmap``/``newgidmap``); otherwise they run here.
    """

    def __init__(self, mode: str, uid_maps=None, gid_maps=None) -> None:
        self.mode = mode
        self.uid_maps = uid_maps or []
        self.gid_maps = gid_maps or []

    def call(self, func, *args, **kwargs):
        if self.mode != SUBUID:
            return func(*args, **kwargs)
        self._in_userns(func, args, kwargs)
        return None

    def _in_userns(self, func, args, kwargs) -> None:
        from yurt import syscalls as sc
        from yurt.runtime import idmap

        sys.stdout.flush()
        sys.stderr.flush()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(r)
                if self.mode == SINGLE:  # our own id as root: written by ourselves, no helper
                    from yurt.spec import IDMapping

                    uid, gid = os.getuid(), os.getgid()
                    try:
                        sc.unshare(sc.CLONE_NEWUSER)
                    except OSError as e:
                        raise BuildError(f"cannot create a user namespace: {e.strerror}")
                    idmap.write_own_maps([IDMapping(0, uid, 1)], [IDMapping(0, gid, 1)])
                else:
                    helper = idmap.NewIdMapHelper(self.uid_maps, self.gid_maps)
                    try:
                        sc.unshare(sc.CLONE_NEWUSER)
                    except OSError as e:
                        helper.cancel()
                        raise BuildError(f"cannot create a user namespace: {e.strerror}")
                    if not helper.finish():
                        raise BuildError("newuidmap/newgidmap failed to map the subuid range")
                func(*args, **kwargs)
                code = 0
            except YurtError as e:
                os.write(w, str(e).encode())
            except KeyboardInterrupt:
                code = 130
            except BaseException as e:  # noqa: BLE001 - reported to the parent, never raised into its code
                os.write(w, (f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.filename
                             else f"{type(e).__name__}: {e}").encode())
            finally:
                os._exit(code)
        os.close(w)
        try:
            chunks = []
            while chunk := os.read(r, 65536):
                chunks.append(chunk)
        except KeyboardInterrupt:
            _stop_and_reap(pid)
            raise
        finally:
            os.close(r)
        status = _wait(pid)
        if os.waitstatus_to_exitcode(status) == 130:
            raise KeyboardInterrupt
        if status != 0:
            message = b"".join(chunks).decode("utf-8", "replace").strip()
            raise BuildError(message or f"a build step in the user namespace failed ({_exit_text(status)})")

    def as_root(self, func, *args, **kwargs):
        """Like :meth:`call`, but with a single-id fakeroot too in a user namespace where the builder is
        root: reading the whole tree (build-cache scans and layers) must not stop at a file a step left
        mode 000.  As :meth:`call`, the result is returned only when ``func`` runs here."""
        if self.mode != SINGLE:
            return self.call(func, *args, **kwargs)
        self._in_userns(func, args, kwargs)
        return None

    def run(self, argv: list[str], *, what: str, env: dict | None = None, cwd: str | None = None) -> None:
        """Run a command (output streams through); BuildError naming ``what`` when it fails."""
        self.call(_run_checked, argv, what, env, cwd)

    def remove(self, path: str) -> None:
        from yurt.image.squashfs import remove_tree

        try:
            self.call(remove_tree, path)
        except BuildError as e:
            warn(f"could not remove {path}: {e}")


def _run_checked(argv: list[str], what: str, env: dict | None, cwd: str | None) -> None:
    import subprocess

    try:
        rc = subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL).returncode
    except OSError as e:
        raise BuildError(f"{what}: cannot run {argv[0]}: {e.strerror}")
    if rc != 0:
        raise BuildError(f"{what} failed with " + (f"signal {-rc}" if rc < 0 else f"exit status {rc}"))


def detect_mode() -> Runner:
    """The build's kind of root (see the module docstring), said once on stderr."""
    if os.geteuid() == 0:
        return Runner(ROOT)
    from yurt.runtime import idmap
    from yurt.runtime.plan import _user_info

    uid, gid = os.getuid(), os.getgid()
    if not _truthy("YURT_BUILD_IGNORE_SUBUID"):
        uid_maps, gid_maps, multi = idmap.fakeroot_maps(uid, gid, _user_info(uid, gid)[0], use_subid=True)
        if multi:
            runner = Runner(SUBUID, uid_maps, gid_maps)
            try:
                runner.call(os.getuid)  # newuidmap works here?
            except BuildError as e:
                warn(f"cannot use the subuid range ({e}); using a single-id fakeroot")
            else:
                _say("fakeroot with a subuid range (newuidmap)")
                return runner
    _say("single-id fakeroot; chown/mknod are faked (seccomp)")
    return Runner(SINGLE)


# -- copying files into a sandbox -------------------------------------------------------------------


def glob_in_root(root: str, pattern: str) -> list[str]:
    """Container paths matching ``pattern`` inside ``root``; every directory listed is resolved inside it."""
    import fnmatch

    comps = [c for c in pattern.split("/") if c and c != "."]
    if not any(glob.has_magic(c) for c in comps):
        return ["/" + "/".join(comps)]
    candidates = ["/"]
    for comp in comps:
        if not glob.has_magic(comp):
            candidates = [c.rstrip("/") + "/" + comp for c in candidates]
            continue
        found = []
        for c in candidates:
            try:
                existing, missing = resolve_in_root(root, c)
            except EscapeError:
                continue
            directory = host_path(root, existing)
            if missing or not os.path.isdir(directory):
                continue
            for name in sorted(os.listdir(directory)):
                if fnmatch.fnmatchcase(name, comp) and (comp.startswith(".") or not name.startswith(".")):
                    found.append(c.rstrip("/") + "/" + name)
        candidates = found
    out = []
    for c in candidates:
        try:
            if not resolve_in_root(root, c)[1]:
                out.append(c)
        except EscapeError:
            continue
    return out


def _resolve_dst(root: str, dst: str) -> tuple[str, list[str]]:
    try:
        return resolve_in_root(root, dst)
    except EscapeError as e:
        raise BuildError(f"%files: cannot copy to {dst}: {e.strerror}")


def copy_into(src: str, name: str, root: str, dst: str, cp_args: list[str]) -> None:
    """Copy the host path ``src`` to the container path ``dst`` of ``root``, as ``cp -r`` would.

    An existing directory at ``dst`` receives ``name``; missing parents are made.  ``dst`` is
    resolved inside ``root``, so no symlink leads out of it.
    """
    existing, missing = _resolve_dst(root, dst)
    if not missing and os.path.isdir(host_path(root, existing)):
        dst = existing.rstrip("/") + "/" + name
    _copy_to(src, root, dst, cp_args)


def _copy_to(src: str, root: str, dst: str, cp_args: list[str]) -> None:
    """Copy ``src`` to exactly the container path ``dst``.

    ``cp`` only ever writes to a path that did not exist (so it meets no symlink of the
    image); a directory that exists on both sides is merged entry by entry, each resolved
    inside ``root`` again; an existing file is replaced.
    """
    existing, missing = _resolve_dst(root, dst)
    if missing:
        parent = layout.ensure_dir(root, "/" + "/".join([*existing.split("/"), *missing[:-1]]).strip("/"))
        copy_tree(["cp", *cp_args, "--", src, os.path.join(parent, missing[-1])], f"%files: copying {src}")
        return
    target = host_path(root, existing)
    follow = "L" in "".join(a for a in cp_args if not a.startswith("--"))
    src_is_dir = os.path.isdir(src) if follow else os.path.isdir(src) and not os.path.islink(src)
    if os.path.isdir(target):
        if not src_is_dir:
            raise BuildError(f"%files: cannot copy {src} over the directory {existing} in the image")
        for entry in sorted(os.listdir(src)):
            _copy_to(os.path.join(src, entry), root, existing.rstrip("/") + "/" + entry, cp_args)
        return
    os.unlink(target)
    copy_tree(["cp", *cp_args, "--", src, target], f"%files: copying {src}")


HOST_CP = ["-fLr", "--preserve=mode,timestamps"]  # as Apptainer: symlinks followed, owned by the builder
STAGE_CP = ["-a"]


def copy_host_files(pairs: list[tuple[str, str]], base_dir: str, root: str, dst_base: str = "/") -> None:
    """``%files`` (or ``%appfiles`` with ``dst_base``): host sources relative to ``base_dir``, globs allowed."""
    for src, dst in pairs:
        pattern = src if os.path.isabs(src) else os.path.join(base_dir, src)
        matches = sorted(glob.glob(pattern)) if glob.has_magic(src) else [pattern]
        if not matches or not os.path.lexists(matches[0]):
            raise BuildError(f"%files: {src} " + ("matches nothing" if glob.has_magic(src) else "does not exist")
                             + (f" (relative to {base_dir})" if not os.path.isabs(src) else ""))
        for match in matches:
            if dst == src and glob.has_magic(src):  # no destination given: the same path in the image
                target = match if os.path.isabs(src) else os.path.relpath(match, base_dir)
            else:
                target = dst
            if len(matches) > 1:
                layout.ensure_dir(root, _join(dst_base, target))
            copy_into(match, os.path.basename(match.rstrip("/")), root, _join(dst_base, target), HOST_CP)


def copy_stage_files(pairs: list[tuple[str, str]], stage: str, src_root: str, root: str) -> None:
    """``%files from STAGE``: sources resolved inside the earlier stage's sandbox."""
    for src, dst in pairs:
        matches = glob_in_root(src_root, src)
        if not matches:
            raise BuildError(f"%files from {stage}: {src} matches nothing in stage {stage}")
        for match in matches:
            try:
                existing, missing = resolve_in_root(src_root, match)
            except EscapeError as e:
                raise BuildError(f"%files from {stage}: {src}: {e.strerror}")
            if missing:
                raise BuildError(f"%files from {stage}: {match} does not exist in stage {stage}")
            target = match if dst == src and glob.has_magic(src) else dst
            if len(matches) > 1:
                layout.ensure_dir(root, target)
            name = match.rstrip("/").rsplit("/", 1)[-1] or "."
            copy_into(host_path(src_root, existing), name, root, target, STAGE_CP)


def _join(base: str, path: str) -> str:
    return "/" + "/".join([*(p for p in base.split("/") if p), *(p for p in path.split("/") if p)])


def existing_in_root(root: str, path: str) -> str | None:
    """The host path of the container path ``path`` of ``root`` if it exists (resolved inside ``root``), else None."""
    try:
        existing, missing = resolve_in_root(root, path)
    except EscapeError:
        return None
    return None if missing else host_path(root, existing)


def remove_placeholders(root: str, paths: list[str]) -> None:
    """Remove the empty mount points the launcher made in a writable sandbox (``/.post.script``, ...)."""
    for path in sorted(paths, key=len, reverse=True):
        target = existing_in_root(root, path)
        if target is None:
            continue
        try:
            st = os.lstat(target)
            if os.path.isdir(target) and not os.listdir(target):
                os.rmdir(target)
            elif not os.path.isdir(target) and st.st_size == 0 and not os.path.islink(target):
                os.unlink(target)
        except OSError:
            pass


def read_build_labels(root: str) -> dict[str, str]:
    """Labels that ``%post`` appended to ``$APPTAINER_LABELS`` (``KEY VALUE`` lines); the file is removed."""
    from yurt.builder.deffile_lexer import parse_labels

    raw = layout.read_file(root, layout.BUILD_LABELS)
    if raw is None:
        return {}
    try:
        os.unlink(layout.in_root(root, layout.BUILD_LABELS))
    except OSError:
        pass
    return parse_labels(raw.decode("utf-8", "replace"))


# -- the build ---------------------------------------------------------------------------------------


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


class _Build(BuildState):
    def __init__(self, definitions, text: str, recipe_dir: str, runner: Runner, work: str, ctl: str, *,
                 notest: bool, pull_options, build_cache=None) -> None:
        super().__init__(runner, work, ctl, pull_options, build_cache)
        self.definitions = definitions
        self.text = text
        self.recipe_dir = recipe_dir
        self.notest = notest
        self.trees: dict[str, Tree] = {}

    def run(self) -> Tree:
        """Build every stage; the last one's tree."""
        tree = None
        total = len(self.definitions)
        for i, d in enumerate(self.definitions):
            name = f" ({d.stage})" if d.stage else ""
            tree = Tree(self, os.path.join(self.work, f"stage-{i}"), f"stage {i + 1}/{total}{name}: " if total > 1
                        else "")
            self.stage(d, tree)
            if d.stage:
                self.trees[d.stage] = tree
        assert tree is not None
        return tree

    def stage(self, d, tree: Tree) -> None:
        from yurt import __version__
        from yurt.builder import cache

        sandbox = tree.path
        identity = agents.identity(d, self.recipe_dir, self.pull_options, self.runner.mode)
        pre = d.sections_named("pre")

        def do_bootstrap() -> dict:
            if pre:
                self.script_on_host("pre", d.pre, {})
            boot = agents.bootstrap(d, sandbox, self.runner, recipe_dir=self.recipe_dir,
                                    pull_options=self.pull_options)
            config = boot.oci_config
            if config is None and d.bootstrap == "localimage":
                config = _sandbox_oci_config(sandbox)
            return {"oci_config": config}

        what = f"bootstrap {d.bootstrap}" + (f" {d.source}" if d.source else "")
        config = tree.step("bootstrap", {"identity": identity, "pre": d.pre if pre else None}, what,
                           do_bootstrap).get("oci_config")
        self.oci_config = config

        # %files from, %setup, %files and %appfiles: one step keyed by their text and what they copy.
        from_keys = {}
        for stage in d.files_from:
            if stage not in self.trees:
                raise BuildError(f"%files from {stage}: no earlier stage is named {stage}")
            from_keys[stage] = self.trees[stage].key
        host_files = [(src, dst, _sources_digest(src, self.recipe_dir)) for src, dst in d.files]
        app_files = {app: [(src, dst, _sources_digest(src, self.recipe_dir)) for src, dst in d.app_files(app)]
                     for app in d.apps if d.app_files(app)}
        payload = {"config": config, "apps": list(d.apps), "from": from_keys,
                   "files_from": {k: list(map(list, v)) for k, v in d.files_from.items()},
                   "setup": d.setup if d.sections_named("setup") else None, "files": host_files, "appfiles": app_files}

        def do_prepare() -> None:
            self.runner.call(layout.prepare_base, sandbox, oci_config=config,
                             oci_image=d.bootstrap in agents.OCI_AGENTS, apps=list(d.apps))
            for stage, pairs in d.files_from.items():
                _say(f"{tree.label}%files from {stage}")
                self.trees[stage].materialize()
                self.runner.call(copy_stage_files, pairs, stage, self.trees[stage].path, sandbox)
            if d.sections_named("setup"):
                _say(f"{tree.label}%setup")
                self.script_on_host("setup", d.setup, {"APPTAINER_ROOTFS": sandbox, "SINGULARITY_ROOTFS": sandbox,
                                                       "YURT_ROOTFS": sandbox})
            if d.files:
                _say(f"{tree.label}%files")
                self.runner.call(copy_host_files, d.files, self.recipe_dir, sandbox)
            for app in d.apps:
                if d.app_files(app):
                    self.runner.call(copy_host_files, d.app_files(app), self.recipe_dir, sandbox, f"/scif/apps/{app}")

        tree.step("prepare", payload, "base layout" + (", %setup" if d.sections_named("setup") else "")
                  + (", %files" if d.files or d.files_from else ""), do_prepare)

        post = d.post + layout.post_prologue(d.apps)
        post_labels: dict[str, str] = {}
        if d.sections_named("post") or post.strip():
            def do_post() -> dict:
                self.post(d, sandbox, post)
                return {"labels": read_build_labels(sandbox)}  # the file belongs to the builder in every mode

            post_labels = tree.step("post", {"post": post, "args": d.section_args("post"), "mode": self.runner.mode},
                                    "%post", do_post).get("labels") or {}

        def do_metadata() -> dict:
            inherited = layout.inherited_labels(sandbox)
            labels = {**inherited,
                      **layout.build_labels(d.bootstrap, d.source, help_text=bool(d.sections_named("help")),
                                            version=__version__),
                      **d.labels, **post_labels}
            self.runner.call(layout.write_metadata, sandbox, d, deffile_text=self.text, labels=labels)
            if d.sections_named("test") and not self.notest:
                _say(f"{tree.label}%test")
                self.test(sandbox)
            return {"labels": labels}

        sections = [[s.name, s.app, s.args, s.body] for s in d.sections
                    if s.name not in ("pre", "setup", "files", "appfiles", "post", "appinstall")]
        meta_payload = {"text": cache.step_key(None, "text", self.text), "sections": sections, "labels": d.labels,
                        "post_labels": post_labels, "test": not self.notest, "version": __version__,
                        "epoch": os.environ.get("SOURCE_DATE_EPOCH")}
        self.labels = tree.step("metadata", meta_payload, "metadata" + (", %test" if d.sections_named("test")
                                and not self.notest else ""), do_metadata).get("labels") or {}

    # -- the scripts --

    def _script(self, name: str, body: str) -> str:
        path = os.path.join(self.ctl, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(body)
        os.chmod(path, 0o755)
        return path

    def script_on_host(self, name: str, body: str, extra_env: dict[str, str]) -> None:
        """``%pre`` or ``%setup``: ``/bin/sh -e`` on the host, as the builder (the build's root for %setup)."""
        path = self._script(f"{name}.script", body)
        env = dict(os.environ, **extra_env)
        if name == "pre":
            _run_checked(["/bin/sh", "-e", path], "%pre", env, None)
        else:
            self.runner.run(["/bin/sh", "-e", path], what=f"%{name}", env=env)

    def post(self, d, sandbox: str, body: str) -> None:
        args = d.section_args("post")
        interp = "/bin/sh"
        if len(args) >= 2 and args[0] == "-c":
            interp = args[1]
        elif args:
            warn(f"%post arguments {' '.join(args)} ignored (only -c INTERPRETER)")
        path = self._script("post.script", body)
        binds = [f"{path}:{POST_SCRIPT}:ro"]
        env = [f"{p}_ENVIRONMENT={layout.BUILD_ENVIRONMENT}" for p in ("APPTAINER", "SINGULARITY")]
        env += [f"{p}_LABELS={layout.BUILD_LABELS}" for p in ("APPTAINER", "SINGULARITY")]
        more_binds, more_env = single_id_extras(self.runner, self.ctl)
        binds += more_binds
        env += more_env
        status = run_in_container(self.runner, sandbox, [interp, "-e", POST_SCRIPT], writable=True, fakeroot=True,
                                  binds=binds, env=env)
        if status != 0:
            raise BuildError(f"%post failed with {_exit_text(status)}")

    def test(self, sandbox: str) -> None:
        status = run_in_container(self.runner, sandbox, ["/.singularity.d/test"], writable=False, fakeroot=False,
                                  binds=[], env=[])
        if status != 0:
            raise BuildError(f"%test failed with {_exit_text(status)} (see its output above; --notest skips it)")


def single_id_extras(runner: Runner, ctl: str) -> tuple[list[str], list[str]]:
    """Binds and environment that a build step needs under a single-id fakeroot: apt must not drop to ``_apt``."""
    if runner.mode != SINGLE:
        return [], []
    apt = os.path.join(ctl, "apt.conf")
    if not os.path.exists(apt):
        with open(apt, "w", encoding="utf-8") as f:
            f.write(APT_SANDBOX)
    return [f"{apt}:{APT_CONF}:ro"], [f"APT_CONFIG={APT_CONF}"]


def _sources_digest(src: str, base_dir: str) -> list:
    """What a ``%files`` source names on the host, digested (for the step's cache key)."""
    from yurt.builder.cache import tree_digest

    pattern = src if os.path.isabs(src) else os.path.join(base_dir, src)
    matches = sorted(glob.glob(pattern)) if glob.has_magic(src) else [pattern]
    return [[os.path.relpath(m, base_dir), tree_digest(m, follow_links=True)] for m in matches if os.path.exists(m)]


def _sandbox_oci_config(root: str) -> dict | None:
    """The OCI config a base sandbox carries (``/.singularity.d/oci-config.json``), read and checked as at run time."""
    from yurt.image import metadata

    raw = layout.read_file(root, "/.singularity.d/oci-config.json")
    if not raw:
        return None
    what = "the base image's /.singularity.d/oci-config.json"
    try:
        return metadata.oci_config(metadata.parse(raw, what), what)
    except ImageError as e:
        raise BuildError(e.message)


def run_in_container(runner: Runner, sandbox: str, args: list[str], *, writable: bool, fakeroot: bool,
                     binds: list[str], env: list[str], cwd: str = "/", run_as: list[int] | None = None) -> int:
    """Run ``args`` in the sandbox through the real launcher, in a forked child; its wait status.

    With ``writable``, the empty mount points the launcher had to create in the sandbox are
    removed afterwards.
    """
    from yurt.image.rootfs import DirectoryRootfs
    from yurt.image.source import Image
    from yurt.runtime.plan import ActionRequest, plan_container

    # site=False: as Apptainer, build steps ignore the site's binds and image rules.
    req = ActionRequest(action="exec", image=Image(path=sandbox, kind="sandbox"), args=args, writable=writable,
                        fakeroot=fakeroot and runner.mode != ROOT, ignore_subuid=runner.mode == SINGLE,
                        fake_ownership=fakeroot and runner.mode == SINGLE, cleanenv=True, no_home=True, pwd=cwd,
                        binds=binds, env=env, site=False, run_as=run_as, image_tmp=writable)
    spec = plan_container(req)
    created = []
    if writable:
        for m in spec.mounts:
            try:
                if resolve_in_root(sandbox, m.destination)[1]:
                    created.append(m.destination)
            except EscapeError:
                continue
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 255
        try:
            from yurt.runtime.launcher import launch

            launch(spec, DirectoryRootfs(sandbox))
        except YurtError as e:
            os.write(2, f"yurt: error: {e}\n".encode())
            code = e.exit_code
        except KeyboardInterrupt:  # Ctrl-C while the container starts: the build says "interrupted"
            code = 130
        except BaseException as e:  # noqa: BLE001 - the child must never return into the build
            os.write(2, f"yurt: error: cannot start the build container: {e}\n".encode())
        finally:
            os._exit(code)
    try:
        status = _wait(pid)
    finally:
        if created:
            runner.call(remove_placeholders, sandbox, created)
    return status


def _tmp_base(out: str) -> str:
    base = os.environ.get("YURT_TMPDIR") or os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(base):
        raise BuildError(f"cannot build: the directory {base} does not exist")
    return base


def _ctl_dir(work: str) -> str:
    """A directory for the scripts bound into the container (no ':' or ',' in its path: bind syntax)."""
    ctl = os.path.join(work, "ctl")
    if ":" in ctl or "," in ctl:
        ctl = tempfile.mkdtemp(prefix="yurt-build-ctl-")
        if ":" in ctl or "," in ctl:
            raise BuildError(f"cannot build: the temporary directory {ctl} has ':' or ',' in its path",
                             "set YURT_TMPDIR or TMPDIR to another directory")
        return ctl
    os.mkdir(ctl, 0o700)
    return ctl


class _Terminated(KeyboardInterrupt):
    """SIGTERM during a build: cleaned up like Ctrl-C, but reported as SIGTERM (exit 143)."""


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise _Terminated


RECIPE_LIMIT = 16 << 20


def read_text(path: str, what: str, limit: int = RECIPE_LIMIT) -> str:
    """A recipe (definition file, Dockerfile, build-arg file) as text: UTF-8, no NUL byte, at most ``limit``
    bytes; anything else is one BuildError naming the file (and the line)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
    except OSError as e:
        raise BuildError(f"cannot read {what} {path}: {e.strerror}")
    if len(raw) > limit:
        raise BuildError(f"{path}: {what} is larger than {limit} bytes", "is it the right file?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise BuildError(f"{path}:{line}: {what} is not UTF-8 text")
    nul = text.find("\0")
    if nul >= 0:
        raise BuildError(f"{path}:{text.count(chr(10), 0, nul) + 1}: {what} contains a NUL byte")
    return text


def read_recipe(recipe_path: str, build_args: dict[str, str] | None, build_arg_file: str | None,
                warn_unused: bool) -> tuple[str, list]:
    """The rendered text and the parsed, validated stages of a definition file (warnings printed)."""
    from yurt.builder import deffile, templating

    text = read_text(recipe_path, "the definition file").removeprefix("\ufeff")
    arg_values: dict[str, str] = {}
    warnings: list[str] = []
    if build_arg_file:
        arg_values, warnings = templating.parse_arg_file(read_text(build_arg_file, "the build-arg file"),
                                                         filename=build_arg_file)
    rendered, more = templating.render(text, dict(build_args or {}), arg_values, warn_unused=warn_unused,
                                       filename=recipe_path)
    warnings += more
    definitions = deffile.parse(rendered, filename=recipe_path)
    deffile.validate(definitions)
    for w in warnings + [w for d in definitions for w in d.warnings]:
        warn(w)
    return rendered, definitions


def build(recipe_path: str, out: str, *, sandbox: bool = False, notest: bool = False,
          build_args: dict[str, str] | None = None, build_arg_file: str | None = None,
          warn_unused_build_args: bool = False, fakeroot: bool = False, compression: str | None = None,
          mksquashfs_args: list[str] | tuple[str, ...] = (), force: bool = False, pull_options=None,
          no_cache: bool = False) -> None:
    """Build the definition file ``recipe_path`` into ``out`` (a SIF, or a directory with ``sandbox``).

    ``fakeroot`` is accepted for Apptainer compatibility: an unprivileged build is always a
    fakeroot build.  Steps found in the build cache are not run (``no_cache``: every step
    runs; the cache is still filled).  BuildError on any failure, after removing everything
    the build made.
    """
    text, definitions = read_recipe(recipe_path, build_args, build_arg_file, warn_unused_build_args)
    agents._PULLED.clear()
    compression = compression or default_compression()
    check_output(out, sandbox=sandbox, force=force, compression=compression)
    recipe_dir = os.path.dirname(os.path.abspath(recipe_path))

    def make(runner: Runner, work: str, ctl: str) -> None:
        b = _Build(definitions, text, recipe_dir, runner, work, ctl, notest=notest, pull_options=pull_options,
                   build_cache=open_cache(no_cache))
        last = b.run()
        finish(b, last, out, sandbox=sandbox, compression=compression, mksquashfs_args=mksquashfs_args,
               deffile=text.encode())

    in_workspace(out, make)


def default_compression() -> str:
    from yurt.image.squashfs import DEFAULT_COMPRESSION

    return DEFAULT_COMPRESSION


def check_output(out: str, *, sandbox: bool, force: bool, compression: str) -> None:
    """Refuse an existing OUT (unless ``force`` for a SIF) and an unknown compressor, before any work."""
    if os.path.lexists(out) and (sandbox or not force):
        raise BuildError(f"{out} already exists", None if sandbox else "use --force to overwrite it")
    if not sandbox:
        from yurt.image.squashfs import COMPRESSIONS

        if compression not in COMPRESSIONS:
            raise BuildError(f"unknown squashfs compression {compression!r}", f"use one of: {', '.join(COMPRESSIONS)}")


def in_workspace(out: str, make) -> None:
    """``make(runner, work, ctl)`` with a fresh work directory next to OUT, removed whatever happens.

    Ctrl-C and SIGTERM end the build cleanly ("nothing was built").
    """
    runner = detect_mode()
    work = tempfile.mkdtemp(prefix=".yurt-build-", dir=_tmp_base(out))
    ctl = None
    try:
        old_term = signal.signal(signal.SIGTERM, _on_sigterm)  # cleaned up like Ctrl-C
    except ValueError:  # not the main thread
        old_term = None
    try:
        ctl = _ctl_dir(work)
        make(runner, work, ctl)
    except KeyboardInterrupt as e:
        term = isinstance(e, _Terminated)
        raise Interrupted("interrupted" + (" (SIGTERM)" if term else "") + "; nothing was built",
                          signal.SIGTERM if term else signal.SIGINT)
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        if ctl and not ctl.startswith(work + os.sep):
            runner.remove(ctl)
        runner.remove(work)


def open_cache(no_cache: bool):
    """The build cache (None, with a warning, when the cache directory cannot be used)."""
    from yurt.builder.cache import BuildCache

    try:
        return BuildCache(read=not no_cache)
    except (YurtError, OSError) as e:
        warn(f"building without the build cache: {e}")
        return None


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
        if e.errno != errno.EXDEV:
            raise BuildError(f"cannot move the sandbox to {out}: {e.strerror}")
        runner.call(copy_tree, ["cp", "-a", "--", src, out], f"copying the sandbox to {out}")
