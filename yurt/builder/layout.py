"""The Apptainer in-image layout, written into a sandbox being built.

Two steps, in Apptainer's order (``[A] internal/pkg/build/sources/base_environment.go``
and ``metadata.go``):

* :func:`prepare_base` right after the bootstrap, before ``%post``: the
  directories every image has (``dev proc sys tmp var/tmp home root etc``), empty
  ``/etc/hosts`` and ``/etc/resolv.conf`` mount points when missing,
  ``/.singularity.d/env/01-base.sh``, the OCI image's ``Env`` as
  ``env/10-docker2singularity.sh`` (so ``%post`` sees it) and its Entrypoint and Cmd
  as the runscript, the ``/singularity``
  and ``/environment`` symlinks, and the SCIF app directories.
* :func:`write_metadata` after ``%post``: ``%environment`` ->
  ``env/90-environment.sh``, ``%runscript``/``%startscript``/``%test`` (with
  ``#!/bin/sh`` unless the section starts with its own ``#!``), ``labels.json``
  (inherited, build and ``%labels`` labels), ``runscript.help`` and the
  definition file as ``Singularity`` (an inherited one moves to
  ``bootstrap_history/``), plus ``/scif/apps/NAME/scif/...`` for SCIF apps.

Every path is resolved inside the sandbox (:func:`yurt.runtime.paths.resolve_in_root`),
so a hostile base image cannot make the build write outside it.
"""

from __future__ import annotations

import json
import os
import stat
import time

from yurt.errors import BuildError, ImageError, warn
from yurt.image import inroot, metadata
from yurt.runtime.environment import sh_quote
from yurt.runtime.paths import EscapeError, host_path, resolve_in_root

META = "/.singularity.d"
ENV_DIR = f"{META}/env"
RUNSCRIPT = f"{META}/runscript"
BASE_ENV = (
    "#!/bin/sh\n"
    "# Sourced first at every start of the container (written by yurt build, as Apptainer does).\n"
)
DOCKER_ENV = f"{ENV_DIR}/10-docker2singularity.sh"
ENVIRONMENT = f"{ENV_DIR}/90-environment.sh"
BUILD_ENVIRONMENT = f"{ENV_DIR}/91-environment.sh"  # $APPTAINER_ENVIRONMENT during %post
BUILD_LABELS = "/.build.labels"  # $APPTAINER_LABELS during %post
SCIF = "/scif"
_DIRS = (("dev", 0o755), ("proc", 0o755), ("sys", 0o755), ("tmp", 0o1777), ("var", 0o755), ("var/tmp", 0o1777),
         ("home", 0o755), ("root", 0o700), ("etc", 0o755), (META.strip("/"), 0o755), (ENV_DIR.strip("/"), 0o755),
         (f"{META.strip('/')}/libs", 0o755), (f"{META.strip('/')}/actions", 0o755))


# -- safe file operations inside a root ---------------------------------------------------


def _resolve(root: str, path: str) -> tuple[str, list[str]]:
    try:
        return resolve_in_root(root, path)
    except EscapeError as e:
        raise BuildError(f"cannot use {path} in the image: {e.strerror}")


def ensure_dir(root: str, path: str, mode: int = 0o755) -> str:
    """Host path of the directory ``path`` inside ``root``, created (with its parents) when missing."""
    existing, missing = _resolve(root, path)
    current = host_path(root, existing)
    if not os.path.isdir(current):
        raise BuildError(f"{existing} is not a directory in the image (needed for {path})")
    for comp in missing:
        current = os.path.join(current, comp)
        os.mkdir(current)
        os.chmod(current, mode)
    return current


def in_root(root: str, path: str) -> str:
    """Host path for writing the container ``path``: its parent resolved (and made) inside ``root``.

    The last component is not followed: it is the caller's to replace.
    """
    parent, name = os.path.split("/" + path.strip("/"))
    if not name:
        raise BuildError(f"cannot write {path!r}: not a file path")
    return os.path.join(ensure_dir(root, parent), name)


def _clear(target: str) -> None:
    """Remove a symlink or file at ``target`` (never follow it), so it can be written anew."""
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise BuildError(f"cannot write {target}: it is a directory in the image")
    os.unlink(target)


def write_file(root: str, path: str, data: str | bytes, mode: int = 0o644) -> str:
    """Write the container file ``path`` (replacing a file or symlink there) with ``mode``."""
    target = in_root(root, path)
    _clear(target)
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        view = memoryview(raw)
        while view:
            view = view[os.write(fd, view):]
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return target


def read_file(root: str, path: str, limit: int = inroot.LIMIT, *, follow_links: bool = False) -> bytes | None:
    """Content of the container file ``path``, or None when the image has none.

    Read inside ``root`` by :func:`yurt.image.inroot.read_file`: a regular file, at most ``limit``
    bytes.  Metadata files are read where they are (no link followed); ``follow_links`` first
    resolves the path inside ``root`` (``/etc/passwd`` may be a link within the image).  Anything
    hostile is a BuildError naming the file.
    """
    try:
        if follow_links:
            existing, missing = resolve_in_root(root, path)
            if missing:
                return None
            path = existing
        return inroot.read_file(root, path, limit, where="the image")
    except EscapeError as e:
        raise BuildError(f"cannot read {path} in the image: {e.strerror}")
    except ImageError as e:
        raise BuildError(e.message)


def _present(root: str, path: str) -> bool:
    """Whether the image has something (a link included) at ``path``; its parent is made if missing."""
    return os.path.lexists(in_root(root, path))


def _symlink(root: str, path: str, target: str) -> None:
    link = in_root(root, path)
    if not os.path.lexists(link):
        os.symlink(target, link)


# -- script texts --------------------------------------------------------------------------


def script(body: str) -> str:
    """A section as an executable script: as written when it starts with ``#!``, else under ``#!/bin/sh``."""
    stripped = body.lstrip("\n")
    if stripped.lstrip(" \t").startswith("#!"):
        return stripped.lstrip(" \t")
    return "#!/bin/sh\n\n" + body


def docker_env_script(config: dict) -> str:
    """``10-docker2singularity.sh``: the OCI image's ``Env`` as ``export`` lines."""
    lines = ["#!/bin/sh", "# The OCI image's Env (written by yurt build)."]
    for item in config.get("Env") or []:
        key, sep, value = str(item).partition("=")
        if sep and key and (key[0].isalpha() or key[0] == "_") and all(c.isalnum() or c == "_" for c in key):
            lines.append(f"export {key}={sh_quote(value)}")
    return "\n".join(lines) + "\n"


def docker_runscript(config: dict) -> str | None:
    """A runscript doing what ``docker run`` does with Entrypoint and Cmd; None when the image has neither."""
    entry = [str(a) for a in config.get("Entrypoint") or []]
    cmd = [str(a) for a in config.get("Cmd") or []]
    if not entry and not cmd:
        return None
    lines = ["#!/bin/sh", "# The OCI image's Entrypoint and Cmd (written by yurt build): arguments replace Cmd."]
    if cmd:
        lines.append(f"if [ $# -eq 0 ]; then set -- {' '.join(sh_quote(a) for a in cmd)}; fi")
    if entry:
        lines.append(f'exec {" ".join(sh_quote(a) for a in entry)} "$@"')
    else:
        lines.append('exec "$@"')
    return "\n".join(lines) + "\n"


# -- the two steps -------------------------------------------------------------------------


def prepare_base(root: str, *, oci_config: dict | None = None, oci_image: bool = False, apps: list[str] = ()) -> None:
    """The layout an image needs before ``%post`` runs in it (see the module docstring).

    With ``oci_config``, its Entrypoint and Cmd become the runscript: always for an OCI image
    (``oci_image``, as Apptainer does), else only when the image has no runscript.
    """
    os.chmod(root, 0o755)
    for path, mode in _DIRS:
        ensure_dir(root, path, mode)
    for path in ("/etc/hosts", "/etc/resolv.conf"):
        target = in_root(root, path)
        if not os.path.lexists(target):
            write_file(root, path, b"", 0o644)
    if not _present(root, f"{ENV_DIR}/01-base.sh"):
        write_file(root, f"{ENV_DIR}/01-base.sh", BASE_ENV, 0o755)
    if oci_config is not None:
        write_file(root, DOCKER_ENV, docker_env_script(oci_config), 0o755)
        write_file(root, f"{META}/oci-config.json", json.dumps(oci_config, indent=2, sort_keys=True) + "\n")
        runscript = docker_runscript(oci_config)
        if runscript is not None and (oci_image or not _present(root, RUNSCRIPT)):
            write_file(root, RUNSCRIPT, runscript, 0o755)
    _symlink(root, "/singularity", ".singularity.d/runscript")
    _symlink(root, "/environment", ".singularity.d/env/90-environment.sh")
    for app in apps:
        base = f"{SCIF}/apps/{app}"
        for sub in ("", "/scif", "/scif/env", "/bin", "/lib"):
            ensure_dir(root, base + sub)
        for sub in ("input", "output"):
            ensure_dir(root, f"{SCIF}/data/{app}/{sub}")


def build_labels(bootstrap: str, source: str | None, *, help_text: bool, version: str) -> dict[str, str]:
    """The ``org.label-schema.*`` labels of a build; the date is ``$SOURCE_DATE_EPOCH`` when set."""
    from yurt.image.sif import ARCH_NAMES, host_arch_code

    epoch_text = os.environ.get("SOURCE_DATE_EPOCH", "")
    try:
        epoch = int(epoch_text) if epoch_text else int(time.time())
    except ValueError:
        raise BuildError(f"SOURCE_DATE_EPOCH={epoch_text!r} is not an integer")
    labels = {
        "org.label-schema.schema-version": "1.0",
        "org.label-schema.build-arch": ARCH_NAMES.get(host_arch_code(), "unknown"),
        "org.label-schema.build-date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)),
        "org.label-schema.usage.yurt.version": version,
        "org.label-schema.usage.singularity.deffile.bootstrap": bootstrap,
    }
    if source:
        labels["org.label-schema.usage.singularity.deffile.from"] = source
    if help_text:
        labels["org.label-schema.usage"] = f"{META}/runscript.help"
        labels["org.label-schema.usage.singularity.runscript.help"] = f"{META}/runscript.help"
    return labels


def inherited_labels(root: str) -> dict[str, str]:
    """The labels the base image already had (its ``labels.json``); bad ones are a warning, not a failure."""
    raw = read_file(root, f"{META}/labels.json")
    if not raw:
        return {}
    try:
        return metadata.labels(raw, f"the base image's {META}/labels.json")
    except ImageError as e:
        warn(f"{e.message}; its labels are not inherited")
        return {}


def write_metadata(root: str, definition, *, deffile_text: str, labels: dict[str, str]) -> None:
    """Write what the definition says about the image into ``/.singularity.d`` and ``/scif``."""
    if definition.sections_named("environment"):
        write_file(root, ENVIRONMENT, "#!/bin/sh\n# Custom environment shell code should follow\n\n"
                   + definition.environment, 0o755)
    if definition.sections_named("runscript"):
        write_file(root, RUNSCRIPT, script(definition.runscript), 0o755)
    if definition.sections_named("startscript"):
        write_file(root, f"{META}/startscript", script(definition.startscript), 0o755)
    if definition.sections_named("test"):
        write_file(root, f"{META}/test", script(definition.test), 0o755)
    if definition.sections_named("help"):
        write_file(root, f"{META}/runscript.help", definition.help, 0o644)
    write_file(root, f"{META}/labels.json", json.dumps(labels, indent=4, sort_keys=True) + "\n", 0o644)
    _record_deffile(root, deffile_text)
    for app, sections in definition.apps.items():
        base = f"{SCIF}/apps/{app}/scif"
        if "apprun" in sections:
            write_file(root, f"{base}/runscript", script(sections["apprun"]), 0o755)
        if "appstart" in sections:
            write_file(root, f"{base}/startscript", script(sections["appstart"]), 0o755)
        if "apptest" in sections:
            write_file(root, f"{base}/test", script(sections["apptest"]), 0o755)
        if "apphelp" in sections:
            write_file(root, f"{base}/runscript.help", sections["apphelp"], 0o644)
        if "appenv" in sections:
            write_file(root, f"{base}/env/90-environment.sh", "#!/bin/sh\n\n" + sections["appenv"], 0o755)
        app_labels = {"SCIF_APP_NAME": app, **definition.app_labels(app)}
        write_file(root, f"{base}/labels.json", json.dumps(app_labels, indent=4, sort_keys=True) + "\n", 0o644)


def _record_deffile(root: str, text: str) -> None:
    """``/.singularity.d/Singularity``; the base image's own definition moves to ``bootstrap_history/``."""
    old = read_file(root, f"{META}/Singularity", 4 << 20)
    if old is not None:
        history = ensure_dir(root, f"{META}/bootstrap_history")
        n = 0
        while os.path.lexists(os.path.join(history, f"Singularity{n}")):
            n += 1
        write_file(root, f"{META}/bootstrap_history/Singularity{n}", old, 0o644)
    write_file(root, f"{META}/Singularity", text, 0o644)


def post_prologue(apps: dict[str, dict[str, str]]) -> str:
    """Shell text appended to ``%post``: each app's ``%appinstall``, run in ``/scif/apps/NAME``."""
    parts = []
    for app, sections in apps.items():
        if "appinstall" not in sections:
            continue
        base = f"{SCIF}/apps/{app}"
        parts.append(
            f"\n# %appinstall {app}\n"
            f"cd {sh_quote(base)}\n"
            f"SCIF_APPNAME={sh_quote(app)} SCIF_APPROOT={sh_quote(base)} "
            f"SCIF_APPDATA={sh_quote(SCIF + '/data/' + app)}\n"
            "export SCIF_APPNAME SCIF_APPROOT SCIF_APPDATA\n"
            + sections["appinstall"]
            + "cd /\nunset SCIF_APPNAME SCIF_APPROOT SCIF_APPDATA\n"
        )
    return "".join(parts)
