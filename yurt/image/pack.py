"""Turn a root file system directory into an image: a SIF file or a sandbox directory.

The SIF carries the same objects Apptainer's ``internal/pkg/build/assemblers/sif.go`` writes
(definition file, JSON objects sorted by name including ``inspect-metadata.json`` and
``oci-config.json``, one squashfs PrimSys partition), so ``apptainer inspect`` and
``apptainer run`` understand yurt images.  yurt adds explicit Labels/EnvVar/runscript objects
so its own launcher finds metadata without opening the squashfs.

User content is never modified: missing mount points are the launcher's job.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable
from typing import Any

from yurt.errors import ImageError
from yurt.image.sif import DataType, FsType, PartType, host_arch_code
from yurt.image.sif_write import SifObject, write_sif
from yurt.image.squashfs import DEFAULT_COMPRESSION, mksquashfs, remove_tree

INSPECT_METADATA = "inspect-metadata.json"  # SIFDescInspectMetadataJSON in Apptainer
OCI_CONFIG = "oci-config.json"  # SIFDescOCIConfigJSON in Apptainer
ENV_SCRIPT_PATH = "/.singularity.d/env/90-environment.sh"  # where %environment lands


def _json(obj: Any) -> bytes:
    """Stable JSON: sorted keys, so reproducible builds stay byte-identical."""
    return json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False).encode() + b"\n"


def _source_date_epoch() -> int | None:
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ImageError(f"SOURCE_DATE_EPOCH={value!r} is not an integer")


def _inspect_metadata(
    deffile: bytes | None, labels: dict | None, runscript: bytes | None, env_script: bytes | None
) -> dict | None:
    """Apptainer's ``pkg/inspect.Metadata`` shape, read by ``apptainer inspect`` on a SIF."""
    attrs: dict[str, Any] = {}
    if labels:
        attrs["labels"] = {str(k): str(v) for k, v in labels.items()}
    if env_script is not None:
        attrs["environment"] = {ENV_SCRIPT_PATH: env_script.decode("utf-8", "replace")}
    if runscript is not None:
        attrs["runscript"] = runscript.decode("utf-8", "replace")
    if deffile is not None:
        attrs["deffile"] = deffile.decode("utf-8", "replace")
    if not attrs:
        return None
    return {"data": {"attributes": attrs}, "type": "container"}


def build_sif(
    src_dir: str | os.PathLike[str],
    out_sif: str | os.PathLike[str],
    *,
    compression: str = DEFAULT_COMPRESSION,
    processors: int | None = None,
    mksquashfs_args: tuple[str, ...] | list[str] = (),
    deffile: bytes | None = None,
    labels: dict | None = None,
    runscript: bytes | None = None,
    env_script: bytes | None = None,
    oci_config: dict | None = None,
    all_root: bool = False,
    arch: str | None = None,
) -> None:
    """Squash ``src_dir`` and write a SIF at ``out_sif`` (atomically).

    ``arch`` (Go name or SIF code) stamps the partition; default is the host's, which is right
    unless the tree was built for another CPU.

    With SOURCE_DATE_EPOCH set, the squashfs times, SIF times and ID are pinned so the same
    input tree gives the same SIF bytes.
    """
    src_dir, out_sif = os.fspath(src_dir), os.fspath(out_sif)
    if not os.path.isdir(src_dir):
        raise ImageError(f"cannot build from {src_dir}: not a directory")
    out_dir = os.path.dirname(os.path.abspath(out_sif))
    if not os.path.isdir(out_dir):
        raise ImageError(f"cannot write {out_sif}: directory {out_dir} does not exist")
    epoch = _source_date_epoch()

    objects: list[SifObject] = []
    if deffile is not None:
        objects.append(SifObject(DataType.DEFFILE, deffile))
    if labels:
        objects.append(SifObject(DataType.LABELS, _json(labels)))
    if env_script is not None:
        objects.append(SifObject(DataType.ENVVAR, env_script))
    if runscript is not None:
        objects.append(SifObject(DataType.GENERIC, runscript, name="runscript"))
    json_objects = {}
    metadata = _inspect_metadata(deffile, labels, runscript, env_script)
    if metadata is not None:
        json_objects[INSPECT_METADATA] = _json(metadata)
    if oci_config is not None:
        json_objects[OCI_CONFIG] = _json(oci_config)
    for name in sorted(json_objects):  # Apptainer adds JSON objects in alphabetical order
        objects.append(SifObject(DataType.GENERIC_JSON, json_objects[name], name=name))

    write_sif_with_squashfs(
        out_sif, objects,
        lambda squash: mksquashfs(src_dir, squash, compression=compression, processors=processors,
                                  extra_args=tuple(mksquashfs_args), reproducible_epoch=epoch, all_root=all_root),
        arch=arch or host_arch_code(), epoch=epoch)


def write_sif_with_squashfs(out_sif: str, objects: list[SifObject], make_squashfs: Callable[[str], None], *,
                            arch: str, epoch: int | None) -> None:
    """Write ``out_sif`` (atomically) with ``objects`` and, last, the system partition that
    ``make_squashfs(path)`` writes to a temporary file beside it (removed afterwards, whatever happens).

    With ``epoch`` (SOURCE_DATE_EPOCH) the SIF's times and ID are pinned.
    """
    squash = os.path.join(os.path.dirname(os.path.abspath(out_sif)),
                          f".{os.path.basename(out_sif)}.squashfs-{os.urandom(6).hex()}")
    try:
        make_squashfs(squash)
        objects.append(SifObject(DataType.PARTITION, squash, fs_type=FsType.SQUASH, part_type=PartType.PRIM_SYS,
                                 arch=arch))
        write_sif(out_sif, objects, created_at=epoch, deterministic_id=epoch is not None)
    finally:
        try:
            os.unlink(squash)
        except FileNotFoundError:
            pass


def _copy_entry(src: str, dst: str) -> str:
    """copytree's copy_function that never reads device nodes or blocks on FIFOs."""
    st = os.lstat(src)
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return shutil.copy2(src, dst, follow_symlinks=False)
    if stat.S_ISFIFO(mode):
        os.mkfifo(dst, stat.S_IMODE(mode))
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        try:
            os.mknod(dst, mode, st.st_rdev)
        except PermissionError:
            return dst  # unprivileged: the runtime provides /dev itself
    else:
        return dst  # sockets are meaningless in an image
    shutil.copystat(src, dst, follow_symlinks=False)
    return dst


def build_sandbox(src_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> None:
    """Copy a live tree to a new sandbox directory (symlinks kept, modes and times preserved).

    The copy is made in a hidden sibling and renamed into place, so ``out_dir`` appears whole
    or not at all.
    """
    src_dir, out_dir = os.fspath(src_dir), os.fspath(out_dir)
    if not os.path.isdir(src_dir):
        raise ImageError(f"cannot build from {src_dir}: not a directory")
    if os.path.lexists(out_dir):
        raise ImageError(f"{out_dir} already exists", "remove it or choose another path")
    parent = os.path.dirname(os.path.abspath(out_dir))
    if not os.path.isdir(parent):
        raise ImageError(f"cannot create {out_dir}: directory {parent} does not exist")
    tmp = os.path.join(parent, f".{os.path.basename(out_dir)}.tmp-{os.urandom(6).hex()}")
    try:
        shutil.copytree(src_dir, tmp, symlinks=True, copy_function=_copy_entry)
        os.rename(tmp, out_dir)
    except shutil.Error as e:
        first = e.args[0][0] if e.args and isinstance(e.args[0], list) and e.args[0] else e
        raise ImageError(f"cannot copy {src_dir} to {out_dir}: {_describe(first)}")
    except OSError as e:
        raise ImageError(f"cannot copy {src_dir} to {out_dir}: {e.strerror or e}")
    finally:
        remove_tree(tmp)


def _describe(err: object) -> str:
    if isinstance(err, tuple) and len(err) == 3:
        return f"{err[0]}: {err[2]}"
    return str(err)
