"""Flattened layers into a squashfs through ``tar2sqfs``, and into a SIF.

:func:`tar_to_squashfs` pipes the merged tar stream of :func:`yurt.image.layers.write_merged_tar`
into ``tar2sqfs`` (squashfs-tools-ng), which records owners, modes and device numbers from the
tar headers whatever user runs it, so an image pulled by an unprivileged user keeps root-owned
files and device nodes without ever being unpacked.  :func:`layers_to_sif` wraps that
squashfs, with the image configuration, into a SIF (what ``yurt pull`` and ``yurt build``
from an OCI source write).  It is separate from the merge because it is about the output:
compression choices, the helper process, timing and the atomic rename.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterable
from typing import BinaryIO

from yurt.errors import ImageError
from yurt.image.layer_blob import Layer
from yurt.image.layers import _MAX_MTIME, write_merged_tar

COMPRESSIONS = ("zstd", "gzip", "lz4", "xz", "lzo")
DEFAULT_COMPRESSION = "zstd"
# zstd level 3 (zstd's own default): about gzip -9's ratio on typical images, several times
# faster to build and 2-3x faster to read back; tar2sqfs's own zstd default (15) is ~10x
# slower to build for a few percent.  Use "gzip" for hosts whose kernel or squashfuse lacks
# zstd (Linux < 4.14, old squashfuse).  "lz4" builds and reads fastest but is larger, and
# unsquashfs 4.5 cannot read tar2sqfs's lz4 images (the kernel and squashfuse can), which
# breaks yurt's extract fallback.
DEFAULT_LEVELS = {"zstd": 3, "gzip": 9, "xz": 6}
_LEVEL_RANGES = {"zstd": (1, 22), "gzip": (1, 9), "xz": (0, 9)}


class _TimedWriter:
    """Counts the time spent blocked writing into tar2sqfs (it is the slower side then)."""

    __slots__ = ("_f", "waited")

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.waited = 0.0

    def write(self, data: bytes | memoryview) -> int:
        t = time.perf_counter()
        n = self._f.write(data)
        self.waited += time.perf_counter() - t
        return n


def _epoch(reproducible_epoch: int | None) -> int:
    if reproducible_epoch is not None:
        return int(reproducible_epoch)
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    if value:
        try:
            return int(value)
        except ValueError:
            raise ImageError(f"SOURCE_DATE_EPOCH={value!r} is not an integer")
    return 0


def _compressor_args(compression: str, level: int | None) -> list[str]:
    if compression not in COMPRESSIONS:
        raise ImageError(f"unknown squashfs compression {compression!r}", f"use one of: {', '.join(COMPRESSIONS)}")
    args = ["-c", compression]
    if level is None:
        level = DEFAULT_LEVELS.get(compression)
    elif compression not in _LEVEL_RANGES:
        raise ImageError(f"{compression} compression has no level")
    if level is not None:
        low, high = _LEVEL_RANGES[compression]
        if not low <= int(level) <= high:
            raise ImageError(f"{compression} level {level} is out of range ({low}..{high})")
        args += ["-X", f"level={int(level)}"]
    return args


def _last_line(raw: bytes) -> str:
    lines = [ln.strip() for ln in raw.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1] if lines else "no error message"


def tar_to_squashfs(
    layers: Iterable[Layer],
    out_path: str | os.PathLike[str],
    *,
    compression: str = DEFAULT_COMPRESSION,
    level: int | None = None,
    processors: int | None = None,
    reproducible_epoch: int | None = None,
    max_bytes: int | None = None,
    stats: dict | None = None,
) -> None:
    """Flatten ``layers`` into a new squashfs at ``out_path`` (atomically; overwrites).

    Owners, modes, device numbers and xattrs come from the layers even when not run as root.
    Directories no layer lists, and the root unless a layer lists ``./``, get root ownership,
    mode 0755 and the epoch as time: ``reproducible_epoch``, else ``SOURCE_DATE_EPOCH``,
    else 0; the same layers and epoch always give the same bytes.  With ``stats``, fills in
    ``merge_s`` (Python decompressing and merging), ``wait_s`` (blocked on tar2sqfs),
    ``finish_s`` (tar2sqfs after the end of input), ``total_s``, ``tar_bytes``, ``entries``.
    """
    out_path = os.fspath(out_path)
    directory = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(directory):
        raise ImageError(f"cannot write {out_path}: directory {directory} does not exist")
    tmp = os.path.join(directory, f".{os.path.basename(out_path)}.tmp-{os.urandom(6).hex()}")
    ok = False
    try:
        _run_tar2sqfs(layers, tmp, (), compression=compression, level=level, processors=processors,
                      reproducible_epoch=reproducible_epoch, max_bytes=max_bytes, stats=stats)
        os.rename(tmp, out_path)
        ok = True
    finally:
        if not ok:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


def tar_to_squashfs_fd(layers: Iterable[Layer], out_fd: int, **options) -> None:
    """:func:`tar_to_squashfs` into the open file ``out_fd`` (a memory file, :mod:`yurt.store.memcopy`),
    which ``tar2sqfs`` writes through ``/proc/self/fd/N`` of its inherited copy: no path in any directory
    is involved (a site policy's private conversions).  ``out_fd`` is truncated first."""
    _run_tar2sqfs(layers, f"/proc/self/fd/{out_fd}", (out_fd,), **options)


def _run_tar2sqfs(
    layers: Iterable[Layer],
    target: str,
    pass_fds: tuple[int, ...],
    *,
    compression: str = DEFAULT_COMPRESSION,
    level: int | None = None,
    processors: int | None = None,
    reproducible_epoch: int | None = None,
    max_bytes: int | None = None,
    stats: dict | None = None,
) -> None:
    """Run ``tar2sqfs`` writing ``target``, fed the merged tar of ``layers`` (see :func:`tar_to_squashfs`)."""
    from yurt.image.squashfs import thread_count

    comp_args = _compressor_args(compression, level)
    nproc = thread_count(processors)
    if nproc < 1:
        raise ImageError(f"tar2sqfs needs at least one processor, got {nproc}")
    epoch = min(max(_epoch(reproducible_epoch), 0), _MAX_MTIME)
    from yurt.programs import helper_env, require

    exe = require("tar2sqfs", "install squashfs-tools-ng", ImageError)
    cmd = [exe, "-q", "-f", "--no-skip", *comp_args, "-j", str(nproc),
           "--defaults", f"uid=0,gid=0,mode=0755,mtime={epoch}", target]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err,
                                    bufsize=1 << 20, env=helper_env(), pass_fds=pass_fds)
        except OSError as e:
            raise ImageError(f"cannot run tar2sqfs: {e.strerror}", "install squashfs-tools-ng")
        assert proc.stdin is not None
        writer = _TimedWriter(proc.stdin)  # type: ignore[arg-type]
        merge_stats: dict = {}
        ok = False
        try:
            broken = False
            try:
                write_merged_tar(layers, writer, max_bytes=max_bytes, default_mtime=epoch,  # type: ignore[arg-type]
                                 stats=merge_stats)
                t_end = time.perf_counter()
                proc.stdin.close()
            except BrokenPipeError:
                t_end = time.perf_counter()
                broken = True
            rc = proc.wait()
            if rc != 0 or broken:
                err.seek(0)
                detail = _last_line(err.read()) if rc != 0 else "it stopped reading its input"
                raise ImageError(f"tar2sqfs failed: {detail}")
            ok = True
        finally:
            if not ok and proc.poll() is None:
                proc.kill()
            try:
                proc.stdin.close()
            except OSError:
                pass
            proc.wait()
    if stats is not None:
        total = time.perf_counter() - t0
        stats.update(merge_stats)
        stats.update(total_s=total, wait_s=writer.waited, merge_s=t_end - t0 - writer.waited,
                     finish_s=total - (t_end - t0))


def layers_to_sif(
    layers: Iterable[Layer],
    out_sif: str | os.PathLike[str],
    *,
    oci_config: dict,
    compression: str = DEFAULT_COMPRESSION,
    level: int | None = None,
    processors: int | None = None,
    labels: dict | None = None,
    reproducible_epoch: int | None = None,
    max_bytes: int | None = None,
    stats: dict | None = None,
) -> None:
    """Write a SIF at ``out_sif`` (atomically) holding the flattened layers.

    ``oci_config`` is the image configuration blob (``architecture``, ``config``, ...).  Its
    ``config`` member (Env, Entrypoint, Cmd, WorkingDir, User, Labels, ...) is stored as the
    ``oci-config.json`` object, as Apptainer does, and its architecture stamps the partition.
    ``labels`` default to the image's Labels (``{}`` writes none).
    """
    from yurt.image.pack import INSPECT_METADATA, OCI_CONFIG, _inspect_metadata, _json, write_sif_with_squashfs
    from yurt.image.sif import DataType, arch_code, host_arch_code
    from yurt.image.sif_write import SifObject

    if not isinstance(oci_config, dict):
        raise ImageError("the image configuration is not a JSON object")
    from yurt.image import metadata

    config = metadata.oci_config({"config": oci_config.get("config")}, "the image configuration")
    arch = oci_config.get("architecture")
    part_arch = arch_code(arch) if isinstance(arch, str) and arch else host_arch_code()
    if labels is None:
        image_labels = config.get("Labels")
        labels = image_labels if isinstance(image_labels, dict) else {}
    out_sif = os.fspath(out_sif)
    directory = os.path.dirname(os.path.abspath(out_sif))
    if not os.path.isdir(directory):
        raise ImageError(f"cannot write {out_sif}: directory {directory} does not exist")
    epoch = _epoch(reproducible_epoch) if reproducible_epoch is not None or os.environ.get("SOURCE_DATE_EPOCH") \
        else None  # None: the SIF gets the current time and a random ID

    objects: list[SifObject] = []
    if labels:
        objects.append(SifObject(DataType.LABELS, _json(labels)))
    json_objects = {OCI_CONFIG: _json(config)}
    metadata = _inspect_metadata(None, labels or None, None, None)
    if metadata is not None:
        json_objects[INSPECT_METADATA] = _json(metadata)
    for name in sorted(json_objects):
        objects.append(SifObject(DataType.GENERIC_JSON, json_objects[name], name=name))

    write_sif_with_squashfs(
        out_sif, objects,
        lambda squash: tar_to_squashfs(layers, squash, compression=compression, level=level, processors=processors,
                                       reproducible_epoch=epoch, max_bytes=max_bytes, stats=stats),
        arch=part_arch, epoch=epoch)
