"""Open what the user named as an image: a SIF, a plain squashfs, or a directory.

Only cheap work happens here (the SIF header and descriptor table are read, no
partition data), because this is on the ``yurt exec`` hot path.

The image is opened once, here: :attr:`Image.fd` is the descriptor the site policy is checked on
(:meth:`yurt.config.Config.check_image`) and the only thing handed on to the loop device,
``squashfuse``, ``unsquashfs`` and the directory bind (:mod:`yurt.image.rootfs`); nothing opens the
path again, so a symbolic link swapped after the open changes nothing.
"""

from __future__ import annotations

import os
import stat

from yurt.errors import ImageError
from yurt.record import Record

SQUASHFS_MAGIC = b"hsqs"
SIF_MAGIC_OFFSET = 32
SIF_MAGIC = b"SIF_MAGIC"
REMOTE_SCHEMES = ("docker://", "oras://", "library://", "shub://", "oci:", "oci-archive:",
                  "docker-archive:", "http://", "https://", "instance://")
# The references yurt.registry.pull turns into a SIF (from a registry, or a local OCI source): run from the
# cache, or under a site policy from a private copy (yurt.registry.pull.open_pulled).
PULLED_SCHEMES = ("docker://", "oras://", "oci:", "oci-archive:", "docker-archive:")


class Image(Record):
    """An image on disk and the metadata the launcher needs from it."""

    __slots__ = ("path", "kind", "offset", "size", "objects", "fd", "produce")
    _defaults = {"offset": 0, "size": 0, "objects": dict, "fd": None, "produce": None}
    path: str
    kind: str  # "sif", "squashfs" or "sandbox"
    offset: int
    size: int
    objects: dict[str, bytes]
    fd: int | None  # the image as open_image opened it (close-on-exec; kept for the life of the process)
    # Called as produce(image) before the image's root is needed, when it has no fd yet: a registry or
    # OCI image under a site policy, converted into memory only when it is going to run (not to plan a
    # join, nor in the --sharens ranks that join); it sets fd, offset and size (yurt.registry.private).
    produce: object

    @property
    def name(self) -> str:
        return os.path.basename(self.path.rstrip("/"))

    def oci_config(self) -> dict | None:
        """The OCI config's ``config`` member (Env, Entrypoint, Cmd, WorkingDir, ...), its types checked.

        A sandbox's ``.singularity.d/oci-config.json`` is read inside the image without following
        links (:mod:`yurt.image.inroot`); anything hostile is an ImageError.
        """
        raw = self.objects.get("oci-config.json")
        where = "the OCI config object"
        if raw is None and self.kind == "sandbox":
            from yurt.image import inroot

            root = self.fd if self.fd is not None else self.path  # the directory open_image checked
            raw = inroot.read_file(root, "/.singularity.d/oci-config.json", where=self.path)
            where = "/.singularity.d/oci-config.json"
        if not raw:
            return None
        from yurt.image import metadata

        what = f"{self.path}: {where}"
        return metadata.oci_config(metadata.parse(raw, what), what)


def open_image(ref: str) -> Image:
    """Open the image ``ref`` names, once (see the module docstring)."""
    if ref.startswith(REMOTE_SCHEMES):
        scheme = ref.split(":", 1)[0]
        raise ImageError(f"{scheme}: images are not supported by this yurt yet",
                         "use a local .sif file or directory")
    fd = _open_once(ref)
    try:
        return _identify(ref, fd)
    except BaseException:
        os.close(fd)
        raise


def open_image_fd(fd: int, name: str) -> Image:
    """The image in the file already open at ``fd`` (a private memory copy, :mod:`yurt.registry.private`),
    known as ``name`` (what the user gave: ``YURT_CONTAINER``, messages).  The image owns ``fd`` from
    now on, as it does what :func:`open_image` opens."""
    return _identify(name, fd, path=name)


def _open_once(ref: str) -> int:
    """A descriptor for the file or directory ``ref`` names; FIFOs and devices are refused without being
    opened (an ``O_PATH`` descriptor is looked at first, then reopened through ``/proc/self/fd``: the same
    inode, whatever the path names by then)."""
    try:
        probe = os.open(ref, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ImageError(f"image {ref} not found", "give the path of a .sif file or a directory")
    except OSError as e:
        raise ImageError(f"cannot open image {ref}: {e.strerror}")
    keep = False
    try:
        mode = os.fstat(probe).st_mode
        if stat.S_ISDIR(mode):
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        elif stat.S_ISREG(mode):
            flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
        else:
            raise ImageError(f"{ref} is neither a file nor a directory")
        try:
            return os.open(f"/proc/self/fd/{probe}", flags)
        except PermissionError as e:
            if not stat.S_ISDIR(mode):
                raise ImageError(f"cannot open image {ref}: {e.strerror}")
            keep = True  # a directory we may enter but not list (0711): its O_PATH descriptor does
            return probe
        except OSError as e:
            raise ImageError(f"cannot open image {ref}: {e.strerror}")
    finally:
        if not keep:
            os.close(probe)


def _identify(ref: str, fd: int, path: str | None = None) -> Image:
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        return Image(path=os.readlink(f"/proc/self/fd/{fd}"), kind="sandbox", fd=fd)
    path = path or os.path.abspath(ref)
    try:
        head = os.pread(fd, 64, 0)
    except OSError as e:
        raise ImageError(f"cannot read image {ref}: {e.strerror}")
    if head[SIF_MAGIC_OFFSET:SIF_MAGIC_OFFSET + len(SIF_MAGIC)] == SIF_MAGIC:
        return _open_sif(path, fd)
    if head[:4] == SQUASHFS_MAGIC:
        return Image(path=path, kind="squashfs", offset=0, size=st.st_size, fd=fd)
    raise ImageError(f"{ref} is not a SIF, squashfs or directory image")


# SIF objects the launcher may use, by descriptor name; they are small.
_WANTED_GENERIC = ("oci-config.json", "runscript")


def _open_sif(path: str, fd: int) -> Image:
    from yurt.image.sif import DataType, SifFile

    sif = SifFile.from_fd(path, fd)
    try:
        part = sif.primary_partition()
        image = Image(path=path, kind="sif", offset=part.offset, size=part.size, fd=fd)
        for desc in sif.descriptors:
            if desc.data_type in (DataType.GENERIC_JSON, DataType.GENERIC) and desc.name in _WANTED_GENERIC:
                image.objects[desc.name] = sif.read_object(desc)
            elif desc.data_type == DataType.ENVVAR:
                image.objects["environment"] = sif.read_object(desc)
    finally:
        sif.close()
    return image
