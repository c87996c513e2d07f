"""Dockerfile -> Apptainer definition file (``yurt convert``), as far as a definition file can follow.

A stage becomes a ``Bootstrap: docker`` stage whose %post repeats the RUN steps, %files the COPY steps, %environment
the ENV values and %runscript the ENTRYPOINT/CMD; what has no equivalent is a ``# not converted`` comment and a
warning. It reads parsed stages (:mod:`yurt.builder.dockerfile`) and their image config
(:mod:`yurt.builder.dockerfile_config`); the other direction is :mod:`yurt.builder.convert`.
"""

from __future__ import annotations

import os
import posixpath
import re
import shlex

from yurt.builder.dockerfile import DEFAULT_SHELL, Instruction, Stage
from yurt.builder.dockerfile_args import _clean, _workdir
from yurt.builder.dockerfile_config import image_config
from yurt.builder.dockerfile_context import _URL, _has_magic
from yurt.builder.dockerfile_lexer import _WS

__all__ = ["to_deffile"]

_ARCHIVE = re.compile(r"(?i)\.(?:tar|tar\.(?:gz|bz2|xz|zst|lz4|z)|tgz|tbz2?|txz|tzst)\Z")
_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Variables bash (which may be /bin/sh) makes read-only: assigning one ends a POSIX-mode shell.
_READONLY_SHELL_VARS = frozenset({"UID", "EUID", "PPID", "BASHOPTS", "SHELLOPTS", "BASH_VERSINFO", "BASHPID", "GROUPS"})


def _display(ins: Instruction) -> str:
    flags = []
    for name, value in ins.flags.items():
        for item in value if isinstance(value, list) else [value]:
            flags.append(f"--{name}={item}")
    return " ".join([ins.cmd, *flags, ins.args])


class _DefStage:
    """One stage of a definition file, built from a Dockerfile stage (and the stages it starts from)."""

    def __init__(self, stage: Stage, stages: list[Stage], names: dict[int, str], context_dir: str | None,
                 warnings: list[str]) -> None:  # fmt: skip
        self.stage = stage
        self.stages = stages
        self.names = names
        self.label = names[stage.index]
        self.context_dir = context_dir
        self.warnings = warnings
        self.notes: list[str] = []
        self.files: list[str] = []
        self.files_from: dict[str, list[str]] = {}
        self.environment: list[str] = []
        self.post: list[str] = []
        self.labels: list[str] = []
        self.runscript: list[str] = []
        self.workdir: str | None = None
        self.dirs: set[str] = set()
        self.shell = list(DEFAULT_SHELL)
        self.ran = False

    def warn(self, line: int, text: str) -> None:
        self.warnings.append(f"stage {self.label}, line {line}: {text}")

    def skip(self, ins: Instruction, why: str) -> None:
        self.notes.append(f"# not converted (line {ins.line}): {_display(ins)}")
        self.warn(ins.line, f"{ins.cmd} not converted: {why}")

    def render(self) -> str:
        chain = [self.stage]
        while chain[0].base_stage is not None:
            chain.insert(0, self.stages[chain[0].base_stage])
        root = chain[0]
        if root.base.lower() == "scratch":
            header = ["Bootstrap: scratch"]
        else:
            header = ["Bootstrap: docker", f"From: {root.base}"]
        header.append(f"Stage: {self.label}")
        if len(chain) > 1:
            parents = ", ".join(self.names[s.index] for s in chain[:-1])
            self.notes.append(f"# FROM {self.stage.base}: the instructions of stage {parents} are repeated here")
            self.warn(self.stage.line, f"FROM {self.stage.base}: a definition file cannot start from another stage, "
                                       f"so the instructions of stage {parents} are repeated")  # fmt: skip
        for s in chain:
            if s.platform:
                self.notes.append(f"# not converted (line {s.line}): FROM --platform={s.platform}")
                self.warn(s.line, f"FROM --platform={s.platform} not converted: build with --arch instead")
            for ins in s.instructions:
                self.convert(ins)
        self.make_runscript(chain)
        out = header + self.notes
        sections = [("%files", self.files)]
        sections += [(f"%files from {name}", lines) for name, lines in self.files_from.items()]
        sections += [("%environment", self.environment), ("%post", self.post), ("%runscript", self.runscript),
                     ("%labels", self.labels)]  # fmt: skip
        for title, lines in sections:
            if lines:
                out += ["", title, *(f"    {line}" for line in lines)]
        return "\n".join(out) + "\n"

    def make_runscript(self, chain: list[Stage]) -> None:
        config: dict | None = None
        for s in chain:
            config = image_config(s, config)
        assert config is not None
        sets = {ins.cmd for s in chain for ins in s.instructions}
        if "CMD" not in sets and "ENTRYPOINT" not in sets:
            return
        entrypoint = config.get("Entrypoint") or []
        cmd = config.get("Cmd") or []
        if cmd:
            self.runscript.append(f'if [ "$#" -eq 0 ]; then set -- {shlex.join(cmd)}; fi')
        self.runscript.append(f'exec {shlex.join(entrypoint)} "$@"' if entrypoint else 'exec "$@"')
        if "ENTRYPOINT" not in sets:
            self.warn(chain[-1].line, "CMD without ENTRYPOINT: the base image's ENTRYPOINT, if it has one, is not "
                                      "part of the runscript")  # fmt: skip
        if config.get("WorkingDir"):
            self.warn(chain[-1].line, f"WORKDIR {config['WorkingDir']} applies to the build only: the runscript "
                                      "starts in the caller's directory")  # fmt: skip

    def export(self, key: str, value: str, line: int, *, environment: bool) -> None:
        if not _SHELL_NAME.match(key):
            self.warn(line, f"variable {key!r} is not a valid shell name: not exported")
            return
        if key in _READONLY_SHELL_VARS:
            self.warn(line, f"variable {key} is read-only in bash: not exported")
            return
        text = f"export {key}={shlex.quote(value)}"
        self.post.append(text)
        if environment:
            self.environment.append(text)

    def convert(self, ins: Instruction) -> None:
        cmd = ins.cmd
        if cmd == "RUN":
            self.run(ins)
        elif cmd in ("COPY", "ADD"):
            self.copy(ins)
        elif cmd == "ENV":
            for key, value in ins.pairs:
                self.export(key, value, ins.line, environment=True)
        elif cmd == "ARG":
            for key, _ in ins.pairs:
                if ins.build_args.get(key) is not None:
                    self.export(key, ins.build_args[key], ins.line, environment=False)
        elif cmd == "LABEL":
            for key, value in ins.pairs:
                if any(c in _WS for c in key) or "\n" in value:
                    self.warn(ins.line, f"LABEL {key!r}: blanks in the name or line breaks in the value are replaced")
                self.labels.append(f"{'_'.join(key.split())} {' '.join(value.splitlines())}".rstrip())
        elif cmd == "MAINTAINER":
            self.labels.append(f"Author {ins.words[0]}")
        elif cmd == "WORKDIR":
            self.workdir = _workdir(self.workdir or "/", ins.words[0])
            self.dirs.add(self.workdir)
            self.post += [f"mkdir -p {shlex.quote(self.workdir)}", f"cd {shlex.quote(self.workdir)}"]
        elif cmd == "SHELL":
            self.shell = list(ins.json_form or DEFAULT_SHELL)
        elif cmd in ("CMD", "ENTRYPOINT"):
            pass  # the runscript, at the end
        elif cmd == "USER":
            self.skip(ins, "a definition file cannot change user; %post runs as root and the container as the caller")
        elif cmd == "EXPOSE":
            self.skip(ins, "containers use the host's network: there are no ports to publish")
        elif cmd == "VOLUME":
            self.skip(ins, "no volumes: bind host directories at run time with --bind")
        elif cmd == "STOPSIGNAL":
            self.skip(ins, "no stop signal in a definition file")
        elif cmd == "HEALTHCHECK":
            self.skip(ins, "no health checks in a definition file")
        elif cmd == "ONBUILD":
            self.skip(ins, "no build triggers in a definition file")

    def run(self, ins: Instruction) -> None:
        self.ran = True
        if ins.flags:
            flags = " ".join(f"--{name}" for name in ins.flags)
            self.warn(ins.line, f"RUN {flags} not converted: the command runs without it")
        if ins.json_form is not None:
            text = shlex.join(ins.json_form)
        elif tuple(self.shell) == DEFAULT_SHELL:
            text = ins.args
        else:
            text = shlex.join([*self.shell, ins.args])
        # A subshell per RUN, as Docker runs each in its own shell: `cd` and `exit` stay inside, and its status
        # (that of the last command, whatever `set -e` says) stops the build.
        if "#" in text or "\n" in text:
            self.post += ["(", text, ") || exit $?"]
        else:
            self.post.append(f"( {text} ) || exit $?")

    def copy(self, ins: Instruction) -> None:
        sources, dest = ins.words[:-1], ins.words[-1]
        if ins.cmd == "ADD" and any(_URL.match(s) or _ARCHIVE.search(s) for s in sources):
            self.skip(ins, "ADD of a URL or of a local archive (which Docker unpacks) has no %files equivalent: "
                           "fetch or unpack it in %post")  # fmt: skip
            return
        if "from" in ins.flags and ins.from_stage is None:
            self.skip(ins, f"--from={ins.flags['from']} is an image: %files from can only name a stage")
            return
        other = sorted(set(ins.flags) - {"from", "chown", "chmod"})
        if other:
            self.warn(ins.line, f"{ins.cmd} {' '.join('--' + f for f in other)} not converted")
        if self.ran:
            self.warn(ins.line, f"{ins.cmd} after RUN: %files are copied before %post runs")
        dest_abs = _workdir(self.workdir or "/", dest)
        into = (dest.endswith("/") or dest in (".", "./") or len(sources) > 1 or dest_abs in self.dirs
                or any(_has_magic(s) for s in sources))  # fmt: skip
        if ins.from_stage is not None:
            section = self.files_from.setdefault(self.names[ins.from_stage], [])
        else:
            section = self.files
        targets = []
        for source in sources:
            if ins.from_stage is not None:
                path = source if source.startswith("/") else "/" + source
            else:
                path = _clean(source).lstrip("/") or "."
            is_dir = source.endswith("/") or path in (".", "/") or (
                ins.from_stage is None and self.context_dir is not None
                and os.path.isdir(os.path.join(self.context_dir, path))
            )  # fmt: skip
            if _has_magic(source):
                src, dst, target = path, dest_abs.rstrip("/") + "/", dest_abs
            elif is_dir:  # Docker copies a directory's content: `cp -r dir/. dest` does too
                src = path if path in (".", "/") else path.rstrip("/") + "/."
                dst = target = dest_abs
                self.dirs.add(dest_abs)
            else:
                dst = target = posixpath.join(dest_abs, posixpath.basename(path)) if into else dest_abs
                src = path
            section.append(f"{_files_quote(src)} {_files_quote(dst)}")
            targets.append(target)
        if into:
            self.dirs.add(dest_abs)
        for flag, command in (("chown", "chown"), ("chmod", "chmod")):
            if flag in ins.flags:
                self.post += [f"{command} -R {shlex.quote(ins.flags[flag])} {shlex.quote(t)}" for t in targets]


def _files_quote(path: str) -> str:
    """A %files path: double-quoted when it has blanks or quotes (the definition-file parser reads them back)."""
    if not any(c in _WS or c in "\"'" for c in path):
        return path
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _deffile_names(stages: list[Stage]) -> dict[int, str]:
    used = {s.name for s in stages if s.name}
    names: dict[int, str] = {}
    for s in stages:
        if s.name:
            names[s.index] = s.name
            continue
        name = f"stage{s.index}"
        while name in used:
            name += "_"
        used.add(name)
        names[s.index] = name
    return names


def to_deffile(stages: list[Stage], *, context_dir: str | None = None) -> tuple[str, list[str]]:
    """An Apptainer definition file doing what the Dockerfile's stages do, as far as one can, and the warnings.

    Each stage becomes ``Bootstrap: docker`` (``scratch``), ``From:`` and ``Stage:``; RUN becomes a %post line (in
    a subshell, after ``cd`` to the WORKDIR and with ENV and ARG values exported), COPY becomes %files (``%files from
    STAGE`` with --from; sources are relative to the directory the build runs in, so build from the context),
    ENV becomes %environment, LABEL %labels, and ENTRYPOINT/CMD a %runscript with Docker's rule (arguments replace
    CMD). A stage starting from another repeats that stage's instructions. What a definition file cannot express
    (USER, EXPOSE, VOLUME, HEALTHCHECK, ADD of URLs and archives, ...) becomes a ``# not converted`` comment and a
    warning. With ``context_dir`` a COPY source that is a directory is told from a file (else only ``dir/`` is).
    """
    names = _deffile_names(stages)
    warnings: list[str] = []
    blocks = [_DefStage(stage, stages, names, context_dir, warnings).render() for stage in stages]
    return "\n".join(blocks), warnings
