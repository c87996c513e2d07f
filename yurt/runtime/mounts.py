"""Carry out a ContainerSpec's mount plan inside the new mount namespace.

Order of work (all inside a private tmpfs, the *session*, that only this
container's mount namespace can see):

1. ``/`` becomes a recursive slave: host mounts (autofs) still show up
   inside, nothing we do leaks out.
2. The image is attached (directory, loop, squashfuse, unpacked copy).
3. Mount destinations that the (read-only) image lacks are created in a
   session directory stacked *above* the image with a read-only overlayfs;
   ``--writable-tmpfs``/``--overlay`` add an upper layer.  With nothing
   missing and nothing writable, the image is simply bound.
4. Each planned mount is made, in plan order, on a destination resolved
   inside the new root (symlinks cannot lead out of it) and opened
   ``O_NOFOLLOW`` so it cannot be swapped underneath us.  Kernel file
   systems and ``/tmp`` are never mounted through a symlink of the image, and
   no symlink may lead a mount onto ``/proc``, ``/sys``, ``/dev`` or ``/``
   (:func:`check_destination`).
5. ``pivot_root`` into the new root and detach the host's tree.

Every step fails loudly with the mount it was doing.
"""

from __future__ import annotations

import os
import stat

from yurt import syscalls as sc
from yurt.errors import ImageError, RuntimeSetupError, os_error_text
from yurt.image import inroot
from yurt.image.rootfs import DirectoryRootfs, Rootfs
from yurt.runtime import devices, passwd
from yurt.runtime.paths import EscapeError, host_path, resolve_in_root, split
from yurt.spec import NS_IPC, NS_USER, ContainerSpec, Mount

SESSION_PLACEHOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "session")
ALWAYS_DIR_KINDS = ("tmpfs", "proc", "sysfs", "devpts", "mqueue", "devdir")
FILE_KINDS = ("file", "passwd", "group")
# runc's rule after CVE-2019-16884 and CVE-2019-19921: a kernel file system goes on the image's own
# directory, never where a symlink of the image points; Apptainer refuses a symlinked /tmp as well.
KERNEL_KINDS = ("proc", "sysfs", "devpts", "mqueue", "devdir")
NO_LINK_DESTINATIONS = ("/proc", "/sys", "/dev", "/tmp")
KERNEL_TREES = ("/proc", "/sys")


def check_destination(m: Mount, existing: str, missing: list[str]) -> bool:
    """Whether to make ``m`` where :func:`resolve_in_root` led (``existing`` + ``missing``); False: skip it.

    Raises RuntimeSetupError for an image that redirects a mount with a symlink: ``/proc``, ``/sys``,
    ``/dev`` or ``/tmp`` (or any kernel file system's destination) that is a link, or a link that
    leads another mount onto ``/``, ``/dev``, or into ``/proc`` or ``/sys`` (over the kernel's files).
    A ``/var/tmp`` that links into ``/tmp`` is the image's choice and is left alone: ``/tmp`` is
    mounted already.  Other links stay in the image's root and are followed, as in Apptainer.
    """
    wanted = "/" + "/".join(split(m.destination))
    resolved = "/" + "/".join([*split(existing), *missing])
    if resolved == wanted:
        return True
    what = {"devdir": "a minimal /dev", "bind": f"the host's {m.source}"}.get(
        m.kind, f"the kernel's {m.kind} file system" if m.kind in KERNEL_KINDS else f"a {m.kind}")
    if wanted in NO_LINK_DESTINATIONS or m.kind in KERNEL_KINDS:
        raise RuntimeSetupError(f"the image's {wanted} is a symbolic link (to {resolved}): refusing to mount "
                                f"{what} through it", f"the image needs a real {wanted} directory")
    if wanted == "/var/tmp" and (resolved == "/tmp" or resolved.startswith("/tmp/")):
        return False
    if resolved in ("/", "/dev") or any(resolved == t or resolved.startswith(t + "/") for t in KERNEL_TREES):
        raise RuntimeSetupError(f"a symbolic link in the image leads the mount for {wanted} to {resolved}: "
                                "refusing to mount over the kernel's files", "remove the link from the image")
    return True


def session_base() -> str:
    """Where the session tmpfs is mounted (only inside our namespace).

    ``$YURT_SESSIONDIR`` or ``/var/lib/yurt/session`` (sites), else a directory
    shipped inside the package.  It should not lie under a path that gets
    bound into containers; if it does, the copy is detached after the bind.
    """
    for candidate in (os.environ.get("YURT_SESSIONDIR"), "/var/lib/yurt/session", SESSION_PLACEHOLDER):
        if candidate and os.path.isdir(candidate):
            return candidate
    raise RuntimeSetupError(f"session directory {SESSION_PLACEHOLDER} is missing",
                            "reinstall yurt or set YURT_SESSIONDIR to an empty directory")


class MountExecutor:
    def __init__(self, spec: ContainerSpec, rootfs: Rootfs, before_pivot=None) -> None:
        self.spec = spec
        self.before_pivot = before_pivot  # OCI createRuntime/createContainer hooks (yurt.runtime.hooks)
        self.rootfs = rootfs
        self.userns = spec.has(NS_USER)
        self.debug = spec.extras.debug
        self.base = ""
        self.final = ""
        self._files = 0

    def log(self, msg: str) -> None:
        if self.debug:
            os.write(2, f"yurt: debug: {msg}\n".encode())

    # -- entry point -----------------------------------------------------
    def run(self) -> None:
        try:
            sc.mount(None, "/", None, sc.MS_REC | sc.MS_SLAVE)
            self.base = session_base()
            size = max(self.spec.extras.session_size_mb, 1)
            sc.mount("tmpfs", self.base, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, f"mode=0755,size={size}m")
            image_dir = self.rootfs.attach(os.path.join(self.base, "image"))
            self.log(f"image attached with {self.rootfs.description} at {image_dir}")
            self.final = os.path.join(self.base, "final")
            os.mkdir(self.final, 0o755)
            self.make_root(image_dir)
            for m in self.spec.mounts:
                self.do_mount(m)
            if self.before_pivot is not None:
                self.before_pivot()
            self.pivot()
        except EscapeError as e:
            raise RuntimeSetupError(f"container set-up failed: {e.strerror}")
        except OSError as e:
            raise RuntimeSetupError(f"container set-up failed: {os_error_text(e)}")

    # -- root ------------------------------------------------------------
    def make_root(self, image_dir: str) -> None:
        if not self.spec.root_readonly:
            self.make_writable_root(image_dir)
            return
        lower = os.path.join(self.base, "lower")
        os.mkdir(lower, 0o755)
        missing = [m for m in self.spec.mounts if self.add_mountpoint(image_dir, lower, m)]
        extras = self.spec.extras
        upper = work = None
        lowers = [lower, image_dir] if missing else [image_dir]
        for ov in extras.overlays:
            path, _, mode = ov.partition(":")
            if mode == "ro":
                lowers.insert(0, os.path.join(path, "upper") if os.path.isdir(os.path.join(path, "upper")) else path)
            elif upper is None:
                upper, work = os.path.join(path, "upper"), os.path.join(path, "work")
                os.makedirs(upper, 0o755, exist_ok=True)
                os.makedirs(work, 0o700, exist_ok=True)
            else:
                raise RuntimeSetupError("only one writable --overlay may be given", "add :ro to the others")
        if upper is None and extras.writable_tmpfs:
            upper, work = os.path.join(self.base, "upper"), os.path.join(self.base, "work")
            os.mkdir(upper, 0o755)
            os.mkdir(work, 0o700)
        if len(lowers) == 1 and upper is None:
            sc.mount(image_dir, self.final, None, sc.MS_BIND | sc.MS_REC)
            self.set_attrs(self.final, sc.MOUNT_ATTR_RDONLY | sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV)
            self.log(f"root: read-only bind of {image_dir}")
            return
        if len(lowers) == 1:  # overlayfs needs two lower layers without an upper one
            lowers.insert(0, lower)
        data = "lowerdir=" + ":".join(_escape(p) for p in lowers)
        if upper:
            data += f",upperdir={_escape(upper)},workdir={_escape(work or '')}"
        if self.userns:
            data += ",userxattr"
        flags = sc.MS_NOSUID | sc.MS_NODEV | (0 if upper else sc.MS_RDONLY)
        self.log(f"root: overlay {data}")
        sc.mount("overlay", self.final, "overlay", flags, data)

    def make_writable_root(self, image_dir: str) -> None:
        """``--writable``: the sandbox itself, read-write; missing mountpoints are made in it."""
        if not isinstance(self.rootfs, DirectoryRootfs):
            raise RuntimeSetupError(f"{self.rootfs.description} images are read-only",
                                    "use --writable-tmpfs or --overlay, or build a sandbox (yurt build --sandbox)")
        for m in self.spec.mounts:
            self.add_mountpoint(image_dir, image_dir, m)
        sc.mount(image_dir, self.final, None, sc.MS_BIND | sc.MS_REC)
        self.set_attrs(self.final, sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV)
        self.log(f"root: writable bind of {image_dir}")

    def add_mountpoint(self, image_dir: str, lower: str, m: Mount) -> bool:
        """Create ``m.destination`` in the layer above the image if the image lacks it."""
        existing, missing = resolve_in_root(image_dir, m.destination)
        if not missing or not check_destination(m, existing, missing):
            return False
        parts = [p for p in existing.split("/") if p]
        for i in range(len(parts)):  # mirror existing parents so the overlay keeps their modes
            src = host_path(image_dir, "/".join(parts[: i + 1]))
            dst = host_path(lower, "/".join(parts[: i + 1]))
            if not os.path.isdir(dst):
                os.mkdir(dst)
                os.chmod(dst, stat.S_IMODE(os.stat(src).st_mode) | 0o700)
        parent = host_path(lower, existing)
        for comp in missing[:-1]:
            parent = os.path.join(parent, comp)
            os.makedirs(parent, 0o755, exist_ok=True)
        target = os.path.join(parent, missing[-1])
        if self.wants_file(m):
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
        else:
            os.makedirs(target, 0o755, exist_ok=True)
        self.log(f"created mountpoint {m.destination}")
        return True

    def make_hidden_mountpoint(self, m: Mount, existing: str, missing: list[str]) -> None:
        """Create a destination that an earlier mount hides (the image's layer could not hold it): as
        Apptainer does for nested binds, in what is mounted there, e.g. an empty file in the host
        directory bound as the home (cwltool binds its inputs into its output directory that way).
        Nothing here is an image's: the components are new, made without following links."""
        parent = host_path(self.final, existing)
        try:
            for comp in missing[:-1]:
                parent = os.path.join(parent, comp)
                os.mkdir(parent, 0o755)
            target = os.path.join(parent, missing[-1])
            if self.wants_file(m):
                os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644))
            else:
                os.mkdir(target, 0o755)
        except OSError as e:
            raise RuntimeSetupError(f"mount destination {m.destination} does not exist in the container and cannot "
                                    f"be created in what is mounted on {existing}: {os_error_text(e)}")
        self.log(f"created mountpoint {m.destination} in the mount on {existing}")

    @staticmethod
    def wants_file(m: Mount) -> bool:
        if m.kind in FILE_KINDS:
            return True
        if m.kind in ALWAYS_DIR_KINDS or m.source is None:
            return False
        try:
            return not stat.S_ISDIR(os.stat(m.source).st_mode)
        except OSError:
            return False

    # -- one mount -------------------------------------------------------
    def do_mount(self, m: Mount) -> None:
        if m.kind == "bind" and m.source is not None and not os.path.exists(m.source):
            if m.optional:
                self.log(f"skip {m.destination}: {m.source} missing on the host")
                return
            raise RuntimeSetupError(f"bind source {m.source} does not exist on the host")
        existing, missing = resolve_in_root(self.final, m.destination)
        if not check_destination(m, existing, missing):
            self.log(f"skip {m.destination}: the image links it to {existing}")
            return
        if missing:
            if m.optional:
                return
            self.make_hidden_mountpoint(m, existing, missing)
            existing, missing = resolve_in_root(self.final, m.destination)
            if missing or not check_destination(m, existing, missing):
                raise RuntimeSetupError(f"mount destination {m.destination} does not exist in the container")
        path = host_path(self.final, existing)
        if "if-not-visible" in m.options and m.source and _same_file(m.source, path):
            self.log(f"skip {m.destination}: already visible")
            return
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        target = f"/proc/self/fd/{fd}"
        try:
            self.log(f"mount {m.kind} {m.source or ''} -> {m.destination} {','.join(m.options)}")
            self._mount_kind(m, target, path)
        except OSError as e:
            raise RuntimeSetupError(f"cannot mount {m.source or m.kind} on {m.destination}: {e.strerror}")
        finally:
            os.close(fd)

    def _mount_kind(self, m: Mount, target: str, path: str) -> None:
        nosuid_nodev = sc.MS_NOSUID | sc.MS_NODEV
        if m.kind == "bind":
            assert m.source is not None
            sc.mount(m.source, target, None, sc.MS_BIND | sc.MS_REC)
            attrs = sc.MOUNT_ATTR_NOSUID
            if "dev" not in m.options:
                attrs |= sc.MOUNT_ATTR_NODEV
            if m.readonly:
                attrs |= sc.MOUNT_ATTR_RDONLY
            self.set_attrs(path, attrs)
            self.detach_session_copy(m.source, path)
        elif m.kind == "tmpfs":
            sc.mount("tmpfs", target, "tmpfs", nosuid_nodev, ",".join(o for o in m.options if o != "ro") or None)
        elif m.kind == "proc":
            sc.mount("proc", target, "proc", nosuid_nodev | sc.MS_NOEXEC)
        elif m.kind == "sysfs":
            try:
                sc.mount("sysfs", target, "sysfs", nosuid_nodev | sc.MS_NOEXEC | sc.MS_RDONLY)
            except OSError:  # only allowed with our own network namespace
                sc.mount("/sys", target, None, sc.MS_BIND | sc.MS_REC)
        elif m.kind == "devpts":
            sc.mount("devpts", target, "devpts", sc.MS_NOSUID | sc.MS_NOEXEC, "newinstance,ptmxmode=0666")
        elif m.kind == "devdir":
            devices.mount_minimal_dev(path, ipc_namespace=self.spec.has(NS_IPC), nodes=devices.extra_nodes(m.options),
                                      devpts="no-devpts" not in m.options)
        elif m.kind in FILE_KINDS:
            self.bind_generated(self.generate(m), target, path, m)
        else:
            raise RuntimeSetupError(f"unknown mount type {m.kind!r} for {m.destination}")

    def generate(self, m: Mount) -> bytes:
        if m.kind == "file":
            return m.content or b""
        opts = dict(o.split("=", 1) for o in m.options if "=" in o)
        current = self._read_in_root(m.destination)
        uid, gid = int(opts["uid"]), int(opts["gid"])
        if m.kind == "passwd":
            return passwd.passwd_with_user(current, name=opts["name"], uid=uid, gid=gid,
                                           gecos=opts.get("gecos", ""), home=opts["home"],
                                           shell=opts.get("shell", "/bin/sh"))
        return passwd.group_with_user(current, name=opts["name"], gid=gid, group_name=opts["group"])

    def _read_in_root(self, dest: str) -> bytes | None:
        """The image's own file at ``dest`` (a link within the image followed), or None when unusable."""
        try:
            existing, missing = resolve_in_root(self.final, dest)
            return None if missing else inroot.read_file(self.final, existing, passwd.MAX_SIZE)
        except (OSError, ImageError) as e:
            self.log(f"not using the image's {dest}: {e}")
            return None

    def bind_generated(self, content: bytes, target: str, path: str, m: Mount) -> None:
        files = os.path.join(self.base, "files")
        os.makedirs(files, 0o755, exist_ok=True)
        self._files += 1
        src = os.path.join(files, str(self._files))
        mode = 0o755 if "exec" in m.options else 0o644
        fd = os.open(src, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, mode)
        try:
            os.write(fd, content)
        finally:
            os.close(fd)
        sc.mount(src, target, None, sc.MS_BIND)
        self.set_attrs(path, sc.MOUNT_ATTR_RDONLY | sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV, recursive=False)

    def set_attrs(self, path: str, attrs: int, recursive: bool = True) -> None:
        try:
            sc.mount_setattr(path, attrs, recursive)
            return
        except OSError as e:
            if e.errno not in (38, 22):  # ENOSYS (kernel < 5.12), EINVAL: use a remount
                raise
        flags = sc.MS_REMOUNT | sc.MS_BIND | _statvfs_locked_flags(path)
        if attrs & sc.MOUNT_ATTR_RDONLY:
            flags |= sc.MS_RDONLY
        if attrs & sc.MOUNT_ATTR_NOSUID:
            flags |= sc.MS_NOSUID
        if attrs & sc.MOUNT_ATTR_NODEV:
            flags |= sc.MS_NODEV
        sc.mount(None, path, None, flags)

    def detach_session_copy(self, source: str, path: str) -> None:
        """A recursive bind of a tree holding our session copies the session too: drop it."""
        src = os.path.realpath(source)
        if self.base == src or self.base.startswith(src.rstrip("/") + "/"):
            copy = os.path.join(path, os.path.relpath(self.base, src))
            try:
                sc.umount2(copy, sc.MNT_DETACH)
            except OSError:
                pass

    # -- pivot -----------------------------------------------------------
    def pivot(self) -> None:
        os.chdir(self.final)
        sc.pivot_root(".", ".")
        sc.umount2(".", sc.MNT_DETACH)
        os.chdir("/")


def _escape(path: str) -> str:
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def _same_file(a: str, b: str) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _statvfs_locked_flags(path: str) -> int:
    """Flags a remount in a user namespace must keep (the kernel locks them)."""
    f = os.statvfs(path).f_flag
    out = 0
    for st_flag, ms_flag in ((os.ST_NOSUID, sc.MS_NOSUID), (os.ST_NODEV, sc.MS_NODEV),
                             (os.ST_NOEXEC, sc.MS_NOEXEC), (os.ST_NOATIME, sc.MS_NOATIME),
                             (os.ST_NODIRATIME, sc.MS_NODIRATIME), (os.ST_RELATIME, sc.MS_RELATIME),
                             (os.ST_RDONLY, sc.MS_RDONLY)):
        if f & st_flag:
            out |= ms_flag
    return out
