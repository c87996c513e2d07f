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

Who is root during the build and how steps run as that root is :mod:`yurt.builder.runner`;
the stage trees kept in step with the build cache and the packing of OUT are
:mod:`yurt.builder.buildtree` (shared with the Dockerfile build), the work directory
:mod:`yurt.builder.workspace`, and the copies of ``%files`` :mod:`yurt.builder.sandboxfiles`.
"""

from __future__ import annotations

import glob
import os

from yurt.builder import agents, layout
from yurt.builder.buildtree import BuildState, Tree, finish
from yurt.builder.runner import Runner, _exit_text, _run_checked, _say, run_in_container, single_id_extras
from yurt.builder.sandboxfiles import copy_host_files, copy_stage_files
from yurt.builder.workspace import check_output, default_compression, in_workspace, open_cache
from yurt.errors import BuildError, ImageError, warn

POST_SCRIPT = "/.post.script"


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


RECIPE_LIMIT = 16 << 20  # a definition file, Dockerfile or build-arg file: more is not a recipe


def read_recipe(recipe_path: str, build_args: dict[str, str] | None, build_arg_file: str | None,
                warn_unused: bool) -> tuple[str, list]:
    """The rendered text and the parsed, validated stages of a definition file (warnings printed)."""
    from yurt.builder import deffile, templating
    from yurt.readfile import read_text

    text = read_text(recipe_path, "the definition file", RECIPE_LIMIT, BuildError)
    arg_values: dict[str, str] = {}
    warnings: list[str] = []
    if build_arg_file:
        arg_text = read_text(build_arg_file, "the build-arg file", RECIPE_LIMIT, BuildError)
        arg_values, warnings = templating.parse_arg_file(arg_text, filename=build_arg_file)
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

    in_workspace(out, make, conversion=sandbox and is_conversion(definitions))


# What a stage may have and still be a plain conversion: metadata the build writes itself.
_STEP_SECTIONS = ("pre", "setup", "files", "post", "test", "appinstall", "appfiles", "apptest")
_IMAGE_AGENTS = ("localimage", *agents.OCI_AGENTS)


def is_conversion(definitions) -> bool:
    """Whether the recipe only unpacks an image (``build --sandbox DIR IMG.sif``, ``pull --sandbox``, a
    header with metadata sections): one stage from an image, no step that runs or copies anything, no apps
    (their layout is made by a %post prologue).  Such a sandbox is the user's own (Apptainer's unprivileged
    build); a build with steps keeps the fakeroot id map its steps ran under."""
    if len(definitions) != 1:
        return False
    d = definitions[0]
    return d.bootstrap in _IMAGE_AGENTS and not d.apps and not d.files_from \
        and not any(d.sections_named(name) for name in _STEP_SECTIONS)
