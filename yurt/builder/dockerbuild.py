"""``yurt build --dockerfile``: run a Dockerfile, instruction by instruction, without root, and pack a SIF.

The Dockerfile is parsed by :mod:`yurt.builder.dockerfile` (Docker's rules for ARG, ENV,
substitution, stages).  Only the stages the target needs are built (the last stage, or
``--target``), as BuildKit does.  Each stage is a :class:`yurt.builder.buildtree.Tree`, so every
instruction that changes the tree is one cached step:

* ``FROM image``: pulled through the registry client (its manifest digest keys the step) and
  unpacked; ``FROM stage`` continues that stage's chain of steps; ``FROM scratch`` is empty.
* ``RUN``: through the same launcher as ``yurt exec``, as (fake) root, writable, with the
  stage's ENV and ARG values, in its WORKDIR, with its SHELL (exec form: as written).
* ``COPY``/``ADD``: sources from the context (``.dockerignore`` applied, wildcards with
  Docker's semantics, a directory's *content* copied), ``--from`` a stage or an image,
  ``--chown`` (names looked up in the image's ``/etc/passwd`` and ``/etc/group``) and
  ``--chmod``; files are owned by root unless ``--chown`` says otherwise.  ``ADD`` unpacks
  local tar archives and downloads URLs (mode 0600).  Host sources are first staged in the
  build's private directory, then copied into the tree with every destination resolved
  inside it, so neither a hostile archive nor a symlink in the base image leads out.
* ``WORKDIR`` creates the directory.  ``ENV``, ``ARG``, ``LABEL``, ``USER``, ``CMD``,
  ``ENTRYPOINT``, ``SHELL``, ``EXPOSE``, ``VOLUME``, ``STOPSIGNAL``, ``HEALTHCHECK`` change only
  the image config (:func:`yurt.builder.dockerfile_config.image_config`), which is part of the keys
  of the steps after them.

The result carries the image config as the SIF's ``oci-config.json`` object, so ``yurt run``
follows Entrypoint + Cmd and WorkingDir as ``docker run`` does, plus the Apptainer layout
(``/.singularity.d`` env script and runscript) so it runs in Apptainer too.

``USER`` applies to later ``RUN`` steps (ids and supplementary groups from the image's
``/etc/passwd`` and ``/etc/group``, ``HOME`` from its entry) when the build's namespace maps
them: as root or with a subuid range.  With a single-id fakeroot there is no other id, so the
steps run as root, with a warning.

Not done, with a warning: ``RUN --mount``/``--network``/``--security`` (the step runs
without them), ``ONBUILD`` triggers of a base image, ``FROM --platform`` other than the
host's.  Refused: ``ADD`` of git repositories, heredocs.

The plain functions these steps run on the tree (COPY's placement, ADD's archives, the ids of
``USER`` and ``--chown``) are in :mod:`yurt.builder.dockertree`; the machinery shared with the
definition-file build in :mod:`yurt.builder.runner`, :mod:`yurt.builder.buildtree`,
:mod:`yurt.builder.workspace` and :mod:`yurt.builder.sandboxfiles`.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile

from yurt.builder import agents, layout
from yurt.builder import dockerfile as df
from yurt.builder.buildtree import BuildState, Tree, finish
from yurt.builder.dockerfile_args import _clean, _host_platform, _workdir
from yurt.builder.dockerfile_config import image_config
from yurt.builder.dockerfile_context import _URL, Matcher, _has_magic, copy_sources, load_dockerignore
from yurt.builder.dockertree import (
    _lookup_ids,
    _make_dir,
    _parse_chmod,
    _user_ids,
    extract_archive,
    is_archive,
    place,
)
from yurt.builder.executor import RECIPE_LIMIT
from yurt.builder.runner import SINGLE, Runner, _exit_text, _say, run_in_container, single_id_extras
from yurt.builder.sandboxfiles import existing_in_root, glob_in_root
from yurt.builder.workspace import check_output, default_compression, in_workspace, open_cache
from yurt.errors import BuildError, YurtError, warn
from yurt.readfile import read_text
from yurt.runtime.paths import host_path, resolve_in_root

DOCKERFILE_NAMES = ("Dockerfile", "Containerfile")


def is_dockerfile(path: str) -> bool:
    """Whether a path names a Dockerfile: ``Dockerfile``, ``Containerfile``, ``x.Dockerfile``, ``Dockerfile.x``."""
    name = os.path.basename(path)
    return any(name == n or name.startswith(n + ".") or name.endswith("." + n) for n in DOCKERFILE_NAMES)


def recipe_is_dockerfile(path: str) -> bool:
    """Whether the recipe file at ``path`` is a Dockerfile: its content first, then its name.

    A ``Bootstrap:`` header (before any ``%section``) makes a definition file, whatever the name:
    cwltool writes ``Dockerfile.def`` and users keep ``Singularity`` or ``Apptainer`` files; as
    Apptainer, only a file that has none is taken by its name (:func:`is_dockerfile`)."""
    from yurt.readfile import read_file

    data = read_file(path, "the recipe", RECIPE_LIMIT)
    for raw in data.decode("utf-8", "replace").splitlines():
        line = raw.strip()
        if line.startswith("%"):
            break
        if line.partition(":")[0].strip().lower() == "bootstrap" and ":" in line:
            return False
    return is_dockerfile(path)


# -- the build ---------------------------------------------------------------------------------------


class _DockerBuild(BuildState):
    def __init__(self, stages: list, text: str, filename: str, context: str, runner: Runner, work: str, ctl: str,
                 *, pull_options, build_cache, matcher: Matcher, tag: str | None) -> None:
        super().__init__(runner, work, ctl, pull_options, build_cache)
        self.stages = stages
        self.text = text
        self.filename = filename
        self.context = context
        self.matcher = matcher
        self.tag = tag
        self.trees: dict[int, Tree] = {}
        self.configs: dict[int, dict] = {}
        self.warned: set[str] = set()
        self.images: dict[str, int] = {}  # COPY --from=IMAGE: reference -> index in self.trees

    def warn_once(self, text: str) -> None:
        if text not in self.warned:
            self.warned.add(text)
            warn(text)

    def needed(self, target: int) -> list[int]:
        """The stages ``target`` depends on (its bases and COPY --from stages), and itself, in order."""
        want: set[int] = set()
        todo = [target]
        while todo:
            i = todo.pop()
            if i in want:
                continue
            want.add(i)
            stage = self.stages[i]
            if stage.base_stage is not None:
                todo.append(stage.base_stage)
            todo += [ins.from_stage for ins in stage.instructions if ins.from_stage is not None]
        return sorted(want)

    def run(self, target: int) -> Tree:
        order = self.needed(target)
        for n, i in enumerate(order):
            stage = self.stages[i]
            name = f" ({stage.name})" if stage.name else ""
            label = f"stage {n + 1}/{len(order)}{name}: " if len(order) > 1 else ""
            self.stage(stage, Tree(self, os.path.join(self.work, f"stage-{i}"), label), last=i == target)
        return self.trees[target]

    def _definition(self, base: str, line: int):
        from yurt.builder.deffile_model import Definition

        if base.lower() == "scratch":
            return Definition(header={"bootstrap": "scratch"}, bootstrap="scratch", filename=self.filename, line=line)
        return Definition(header={"bootstrap": "docker", "from": base}, bootstrap="docker", source=base,
                          filename=self.filename, line=line)

    def stage(self, stage, tree: Tree, *, last: bool) -> None:
        if stage.platform and stage.platform.replace("linux/", "") not in (_host_platform().replace("linux/", ""),):
            self.warn_once(f"{self.filename}:{stage.line}: FROM --platform={stage.platform}: building for the "
                           f"host's platform ({_host_platform()})")
        if stage.base_stage is not None:
            base_tree = self.trees[stage.base_stage]
            base_config = self.configs[stage.base_stage]
            if self.cache is None:  # no layers to restore from: copy the tree
                base_tree.materialize()
                from yurt.builder.agents import copy_tree

                self.runner.call(copy_tree, ["cp", "-a", "--", base_tree.path, tree.path], "copying a stage")
                tree.current = True
            tree.key = base_tree.key
        else:
            d = self._definition(stage.base, stage.line)
            identity = agents.identity(d, self.context, self.pull_options, self.runner.mode)

            def do_from() -> dict:
                boot = agents.bootstrap(d, tree.path, self.runner, recipe_dir=self.context,
                                        pull_options=self.pull_options)
                return {"config": boot.oci_config or {}}

            base_config = tree.step("from", {"identity": identity}, f"FROM {stage.base}", do_from).get("config") or {}
            if base_config.get("OnBuild"):
                self.warn_once(f"{self.filename}:{stage.line}: the ONBUILD triggers of {stage.base} are not run")
        for k, ins in enumerate(stage.instructions):
            before = image_config(_prefix(stage, k), base_config)
            where = f"{self.filename}:{ins.line}:"
            if ins.cmd == "RUN":
                self.run_step(tree, ins, before, where)
            elif ins.cmd in ("COPY", "ADD"):
                self.copy_step(tree, ins, before, where)
            elif ins.cmd == "WORKDIR":
                self.workdir_step(tree, image_config(_prefix(stage, k + 1), base_config), where)
        config = image_config(stage, base_config)
        self.configs[stage.index] = config
        self.trees[stage.index] = tree
        if last:
            self.finish_stage(tree, config)

    # -- WORKDIR --

    def workdir_step(self, tree: Tree, config: dict, where: str) -> None:
        """Create the directory if it is missing; owned by the USER in effect, as BuildKit does."""
        path = config["WorkingDir"]
        user = config.get("User") or ""
        as_user = user not in ("", "root", "0", "0:0", "root:root") and self.runner.mode != SINGLE

        def do_workdir() -> None:
            missing = existing_in_root(tree.path, path) is None
            owner = tuple(_user_ids(tree.path, user, where)[0][:2]) if as_user and missing else None
            self.runner.call(_make_dir, tree.path, path, owner)

        tree.step("workdir", {"path": path, "user": user if as_user else None}, f"WORKDIR {path}", do_workdir)

    # -- RUN --

    def run_step(self, tree: Tree, ins, config: dict, where: str) -> None:
        argv = list(ins.json_form) if ins.json_form is not None else [*(config.get("Shell") or df.DEFAULT_SHELL),
                                                                       ins.args]
        env = {k: v for k, v in (ins.build_args or {}).items() if v is not None}
        for item in config.get("Env") or []:
            key, _, value = str(item).partition("=")
            env[key] = value
        workdir = config.get("WorkingDir") or "/"
        user = config.get("User") or ""
        as_root = user in ("", "root", "0", "0:0", "root:root")
        if not as_root and self.runner.mode == SINGLE:
            self.warn_once(f"{where} USER {user}: with a single-id fakeroot there is no other user to be; RUN "
                           "steps run as root (a /etc/subuid range, or building as root, runs them as {user})")
            as_root = True
        for flag in ins.flags:
            self.warn_once(f"{where} RUN --{flag} is not supported: the command runs without it")
        payload = {"argv": argv, "env": sorted(env.items()), "workdir": workdir, "mode": self.runner.mode,
                   "user": None if as_root else user}

        def do_run() -> None:
            self.runner.call(layout.ensure_dir, tree.path, workdir)
            run_as = None
            run_env = dict(env)
            if not as_root:
                run_as, home = _user_ids(tree.path, user, where)
                run_env.setdefault("HOME", home)
            binds, extra_env = single_id_extras(self.runner, self.ctl)
            status = run_in_container(self.runner, tree.path, argv, writable=True, fakeroot=True, binds=binds,
                                      env=[f"{k}={v}" for k, v in run_env.items()] + extra_env, cwd=workdir,
                                      run_as=run_as)
            if status != 0:
                raise BuildError(f"{where} RUN failed with {_exit_text(status)}: {_short(ins.args)}")

        tree.step("run", payload, f"RUN {_short(ins.args)}", do_run)

    # -- COPY and ADD --

    def copy_step(self, tree: Tree, ins, config: dict, where: str) -> None:
        from yurt.builder.cache import tree_digest

        if "from" in ins.flags and ins.from_stage is None:
            return self.copy_from_image(tree, ins, config, where)
        sources, dest = ins.words[:-1], ins.words[-1]
        dest_abs = _workdir(config.get("WorkingDir") or "/", dest)
        wild = any(_has_magic(s) for s in sources)
        into_dir = dest.endswith("/") or dest in (".", "./") or len(sources) > 1 or wild
        if (len(sources) > 1 or wild) and not dest.endswith("/"):
            raise BuildError(f"{where} {ins.cmd} with more than one source: the destination {dest} must end with /")
        for flag in sorted(set(ins.flags) - {"from", "chown", "chmod"}):
            self.warn_once(f"{where} {ins.cmd} --{flag} is not supported: ignored")
        common = {"ins": [ins.cmd, ins.flags, ins.words], "dest": dest_abs, "into": into_dir, "mode": self.runner.mode}
        if ins.from_stage is not None:
            src_tree = self.trees[ins.from_stage]
            payload = {**common, "stage": src_tree.key}

            def do_copy_stage() -> None:
                src_tree.materialize()
                items = []
                for pattern in sources:
                    matches = glob_in_root(src_tree.path, pattern)
                    if not matches:
                        raise BuildError(f"{where} COPY --from={ins.flags['from']}: {pattern} not found in that stage")
                    for match in matches:
                        existing, missing = resolve_in_root(src_tree.path, match)
                        if missing:
                            raise BuildError(f"{where} COPY --from={ins.flags['from']}: {match} not found")
                        path = host_path(src_tree.path, existing)
                        items.append((path, os.path.isdir(path) and not os.path.islink(path)))
                self.place(tree, items, dest_abs, into_dir, ins, where)

            tree.step("copy", payload, f"{ins.cmd} --from={ins.flags['from']} {' '.join(ins.words)}", do_copy_stage)
            return
        for source in sources:
            if _URL.match(source) and (ins.cmd == "COPY" or source.startswith("git") or "git@" in source
                                           or source.endswith(".git")):
                raise BuildError(f"{where} {ins.cmd} {source}: " + ("COPY cannot fetch URLs; use ADD" if ins.cmd ==
                                 "COPY" else "git sources are not supported; clone in a RUN step"))
        found = copy_sources(self.context, sources, self.matcher, where=where)
        digests = []
        for rel in found:
            if _URL.match(rel):
                digests.append([rel, self.download(rel, where)[1]])
            elif os.path.isdir(os.path.join(self.context, rel)):
                digests.append([rel, self.context_dir_digest(rel)])
            else:
                digests.append([rel, tree_digest(os.path.join(self.context, rel))])
        payload = {**common, "sources": digests}

        def do_copy() -> None:
            staging = tempfile.mkdtemp(prefix="copy-", dir=self.ctl)
            items = []
            for n, rel in enumerate(found):
                slot = os.path.join(staging, str(n))
                os.mkdir(slot)
                full = os.path.join(self.context, rel)
                if _URL.match(rel):
                    name = rel.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or "download"
                    target = os.path.join(slot, name)
                    shutil.copyfile(self.download(rel, where)[0], target)
                    os.chmod(target, 0o600)
                    items.append((target, False))
                elif ins.cmd == "ADD" and os.path.isfile(full) and is_archive(full):
                    extract_archive(full, slot)
                    items.append((slot, True))
                elif os.path.isdir(full):
                    self.stage_context_dir(rel, slot)
                    items.append((slot, True))
                else:  # a top-level symlink is followed, as BuildKit does (copy_sources kept it in the context)
                    target = os.path.join(slot, os.path.basename(rel))
                    shutil.copy2(full, target)
                    items.append((target, False))
            try:
                self.place(tree, items, dest_abs, into_dir, ins, where)
            finally:
                shutil.rmtree(staging, ignore_errors=True)

        tree.step("copy", payload, f"{ins.cmd} {' '.join(ins.words)}", do_copy)

    def copy_from_image(self, tree: Tree, ins, config: dict, where: str) -> None:
        """``COPY --from=IMAGE``: copied from like a stage; the image is pulled and unpacked only when a
        step that copies from it actually runs (once per build), not when the step is cached."""
        ref = ins.flags["from"]
        if ref not in self.images:
            d = self._definition(ref, ins.line)
            identity = agents.identity(d, self.context, self.pull_options, self.runner.mode)
            index = len(self.stages) + len(self.images)
            self.images[ref] = index
            self.trees[index] = _ImageTree(self, os.path.join(self.work, f"image-{len(self.images)}"), d,
                                           identity.get("digest") or ref)
        ins = copy.copy(ins)
        ins.from_stage = self.images[ref]
        self.copy_step(tree, ins, config, where)

    def place(self, tree: Tree, items: list[tuple[str, bool]], dest: str, into_dir: bool, ins, where: str) -> None:
        owner: tuple[int, int] | None = (0, 0)
        if "chown" in ins.flags:
            owner = _lookup_ids(tree.path, ins.flags["chown"], where)
        chmod = _parse_chmod(ins.flags["chmod"], where) if "chmod" in ins.flags else None
        if self.runner.mode == SINGLE:
            owner = None  # one id: chown is impossible, and every file is packed as root's anyway
        self.runner.call(place, items, tree.path, dest, into_dir, owner, chmod)

    def stage_context_dir(self, rel: str, slot: str) -> None:
        """A context directory's content, minus what .dockerignore excludes, into ``slot``."""
        top = _clean(rel).lstrip("/") or "."
        prefix = "" if top == "." else top + "/"
        for path in self.matcher.walk(self.context, top):
            full = os.path.join(self.context, path)
            target = os.path.join(slot, path[len(prefix):])
            if os.path.isdir(full) and not os.path.islink(full):
                os.makedirs(target, exist_ok=True)
                shutil.copystat(full, target)
            else:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                if os.path.islink(full):
                    os.symlink(os.readlink(full), target)
                else:
                    shutil.copy2(full, target)

    def context_dir_digest(self, rel: str) -> str:
        import hashlib

        from yurt.builder.cache import tree_digest

        h = hashlib.sha256()
        top = _clean(rel).lstrip("/") or "."
        for path in self.matcher.walk(self.context, top):
            full = os.path.join(self.context, path)
            if os.path.islink(full):  # copied as a link: its text is what matters, never where it leads
                h.update(f"L {path} {os.readlink(full)}\0".encode())
            elif os.path.isdir(full):
                h.update(f"D {path} {os.lstat(full).st_mode & 0o7777:o}\0".encode())
            else:
                h.update(f"{path} {tree_digest(full)}\0".encode())
        return "sha256:" + h.hexdigest()

    def download(self, url: str, where: str) -> tuple[str, str]:
        """ADD URL: fetched once per build into the private directory; ``(path, digest)``."""
        import hashlib

        cached = getattr(self, "_downloads", None)
        if cached is None:
            cached = self._downloads = {}
        if url in cached:
            return cached[url]
        import httpx

        path = os.path.join(self.ctl, f"download-{len(cached)}")
        h = hashlib.sha256()
        try:
            with httpx.stream("GET", url, follow_redirects=True, timeout=60) as r:
                if r.status_code != 200:
                    raise BuildError(f"{where} ADD {url}: the server answered {r.status_code}")
                with open(path, "wb") as f:
                    for chunk in r.iter_bytes():
                        h.update(chunk)
                        f.write(chunk)
        except httpx.HTTPError as e:
            raise BuildError(f"{where} ADD {url}: cannot download it: {e}")
        cached[url] = (path, "sha256:" + h.hexdigest())
        return cached[url]

    # -- the end --

    def finish_stage(self, tree: Tree, config: dict) -> None:
        """The Apptainer layout and labels, written as the last step of the target stage."""
        from yurt import __version__
        from yurt.builder import cache

        labels = {str(k): str(v) for k, v in (config.get("Labels") or {}).items()}
        if self.tag:
            labels["org.opencontainers.image.ref.name"] = self.tag
        self.oci_config = config
        payload = {"config": config, "labels": labels, "version": __version__,
                   "dockerfile": cache.step_key(None, "text", self.text), "epoch": os.environ.get("SOURCE_DATE_EPOCH")}

        def do_metadata() -> dict:
            import json

            all_labels = {**layout.inherited_labels(tree.path),
                          **layout.build_labels("docker", None, help_text=False, version=__version__), **labels}
            all_labels.pop("org.label-schema.usage.singularity.deffile.bootstrap", None)
            all_labels["org.label-schema.usage.yurt.dockerfile"] = os.path.basename(self.filename)

            def write(root: str) -> None:
                layout.prepare_base(root, oci_config=config, oci_image=True)
                layout.write_file(root, f"{layout.META}/labels.json", json.dumps(all_labels, indent=4,
                                                                                sort_keys=True) + "\n", 0o644)
                layout.write_file(root, f"{layout.META}/Dockerfile", self.text, 0o644)

            self.runner.call(write, tree.path)
            return {"labels": all_labels}

        self.labels = tree.step("metadata", payload, "image config and metadata", do_metadata).get("labels") or {}


class _ImageTree(Tree):
    """An image ``COPY --from`` names: unpacked on first use (a cached step never needs it)."""

    def __init__(self, build: _DockerBuild, path: str, definition, key: str) -> None:
        super().__init__(build, path, "")
        self.definition = definition
        self.key = key

    def materialize(self) -> None:
        if self.current:
            return
        b = self.build
        agents.bootstrap(self.definition, self.path, b.runner, recipe_dir=b.context, pull_options=b.pull_options)
        self.current = True


def _prefix(stage, count: int):
    return df.Stage(index=stage.index, name=stage.name, base=stage.base, platform=stage.platform,
                    instructions=stage.instructions[:count], line=stage.line, base_stage=stage.base_stage)


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _base_env_lookup(context: str, pull_options):
    """For the parser: the Env of a base image (pulled into the cache), so ``$PATH`` and friends substitute."""
    def lookup(image: str, platform: str | None) -> list[str] | None:
        from yurt.builder.deffile_model import Definition

        d = Definition(header={"bootstrap": "docker", "from": image}, bootstrap="docker", source=image)
        try:
            result, _ = agents._pull(d, context, pull_options)
        except YurtError:
            return None  # the FROM step reports it, with its line
        from yurt.image.source import open_image

        try:
            config = open_image(str(result.sif)).oci_config() or {}
        except YurtError:
            return None
        return list(config.get("Env") or []) or None

    return lookup


def build(dockerfile: str, context: str, out: str, *, sandbox: bool = False, build_args: dict[str, str] | None = None,
          target: str | None = None, tag: str | None = None, compression: str | None = None,
          mksquashfs_args: list[str] | tuple[str, ...] = (), force: bool = False, pull_options=None,
          no_cache: bool = False) -> None:
    """Build ``dockerfile`` with the build context ``context`` into ``out`` (a SIF, or a sandbox directory)."""
    if not os.path.isdir(context):
        raise BuildError(f"the build context {context} is not a directory")
    text = read_text(dockerfile, "the Dockerfile", RECIPE_LIMIT, BuildError)
    compression = compression or default_compression()
    check_output(out, sandbox=sandbox, force=force, compression=compression)
    context = os.path.abspath(context)
    agents._PULLED.clear()
    stages = df.parse(text, filename=dockerfile, build_args=build_args or {},
                      base_env=_base_env_lookup(context, pull_options))
    if not stages:
        raise BuildError(f"{dockerfile}: no FROM instruction: nothing to build")
    index = len(stages) - 1
    if target:
        names = {s.name: s.index for s in stages if s.name}
        if target.lower() not in names:
            raise BuildError(f"--target {target}: no stage of {dockerfile} is named so",
                             "stages: " + (", ".join(sorted(names)) or "none is named"))
        index = names[target.lower()]
    matcher = load_dockerignore(context, os.path.abspath(dockerfile))

    def make(runner: Runner, work: str, ctl: str) -> None:
        b = _DockerBuild(stages, text, dockerfile, context, runner, work, ctl, pull_options=pull_options,
                         build_cache=open_cache(no_cache), matcher=matcher, tag=tag)
        last = b.run(index)
        finish(b, last, out, sandbox=sandbox, compression=compression, mksquashfs_args=mksquashfs_args, deffile=None)

    _say(f"building {dockerfile} (context {context})")
    in_workspace(out, make)
