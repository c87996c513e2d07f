"""Site policy and user settings: ``/etc/yurt/yurt.toml`` and ``~/.config/yurt/config.toml``.

Two TOML files, read with :mod:`tomllib`:

* the **site file** ``/etc/yurt/yurt.toml``, written by the administrator;
* the **user file** ``$XDG_CONFIG_HOME/yurt/config.toml`` (``~/.config/yurt/config.toml`` when
  ``XDG_CONFIG_HOME`` is unset or not absolute).

Both are optional.  ``yurt exec`` runs once per MPI rank, so when neither file exists loading
costs two ``stat`` calls and :mod:`tomllib` (about 10 ms to import) is never imported; a file that
keeps to plain ``key = value`` lines is read without it too (:func:`yurt.configfile.parse_simple`,
about 1 ms), and a parsed file is kept for the life of the process.  Reading a file is
:mod:`yurt.configfile`, loaded only once a file exists; this module is the key table, the value
checks, the precedence rules and the site's policy checks.

Keys (all at the top level of the file; ``yurt config show`` prints the effective values and where
each came from):

``site_binds`` (list of ``"src[:dst[:ro|rw]]"``, site file only; default ``[]``)
    Bound into every container started by ``yurt exec|run|shell|test``, like Apptainer's
    ``bind path``: e.g. ``["/scratch", "/lustre", "/cvmfs:/cvmfs:ro"]``.  An entry whose source
    does not exist on this node is skipped.  A user ``-B`` to the same destination wins.
``deny_binds`` (list of absolute paths, site file only; default ``[]``)
    Paths users may not bind.  A ``-B``, ``--home``, ``--overlay`` or ``--workdir`` whose source is
    one of them, lies beneath one, or contains one (binding ``/`` would expose them all) is refused;
    so is the automatic home bind.  The automatic working-directory bind is skipped instead.
    Symbolic links are resolved on both sides.  yurt's own system mounts (``/dev``, ``/proc``,
    ``/sys``, ``/tmp``, ``/var/tmp``, ``/etc/hosts``...) are not affected.
``allowed_image_paths`` (list of absolute paths, site file only; default: not set, any location)
    Images run by path (a SIF, squashfs or directory; also the source of ``oci:``,
    ``oci-archive:`` and ``docker-archive:``) must lie beneath one of these directories, after
    symbolic links are resolved.  ``[]`` allows no image by path.
``allowed_image_owners`` (list of user names or uids, site file only; default: not set, any owner)
    Images run by path must be owned by one of these users, e.g. ``["root", "apps"]`` for
    root- or site-owned images only.
``allowed_registries`` (list of ``"host[:port][/repository-prefix]"``, site file only; default: not
    set, any registry)
    Registries ``yurt pull``, ``yurt push``, ``yurt exec docker://...`` and the ``docker``/``oras``
    bootstrap of ``yurt build`` may talk to.  ``docker.io`` means Docker Hub;
    ``"docker.io/library"`` allows only its official images.  ``[]`` allows none.  Images from an
    allowed registry are run without the two image checks above, from a verified copy in memory
    rather than the cache (see "Site policy" below).
``helper_path`` (list of absolute directories, site file only; default ``["/usr/libexec/yurt",
    "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]``)
    Where yurt looks for the programs it runs itself (``squashfuse_ll``, ``unsquashfs``,
    ``mksquashfs``, ``tar2sqfs``, ``newuidmap``...) while a site policy is in force; see "Site policy"
    below.  Without a policy they come from ``PATH``.
``require_signed_images`` (boolean, site file only; default ``false``)
    yurt cannot sign or verify images yet, so ``true`` is rejected with an error instead of being
    silently ignored.
``contain`` (boolean; default ``false``)
    Run as if ``--contain`` were given.  ``--contain=false`` or ``YURT_CONTAIN=0`` turn it off for
    one run.
``squashfs_threads`` (integer >= 0; default ``0``, no limit)
    Most threads ``mksquashfs`` and ``tar2sqfs`` may use when yurt builds or pulls an image (they
    otherwise use every CPU of the job's affinity mask, capped by ``SLURM_CPUS_ON_NODE``).  The
    site's value is a ceiling: the user file or ``YURT_SQUASHFS_THREADS`` may only lower it.
``cache_dir`` (path; default ``{home}/.cache/yurt``; ``$YURT_CACHEDIR`` wins)
    The image cache (downloaded blobs, converted SIFs).
``local_cache_dir`` (path; default ``/var/tmp/yurt-{uid}``; ``$YURT_LOCAL_CACHEDIR`` wins)
    The node-local cache of unpacked images; it must be on a local disk and owned by the user.

    In both paths ``{uid}``, ``{user}`` and ``{home}`` stand for the user's id, name and home, so
    one site line can give every user their own directory (``"/scratch/{user}/yurt"``).

Precedence: built-in default < site file < user file < environment (``YURT_CONTAIN``,
``YURT_SQUASHFS_THREADS``, ``YURT_CACHEDIR``, ``YURT_LOCAL_CACHEDIR``; ``APPTAINER_``/``SINGULARITY_`` for
``YURT_`` is read too, see :func:`env_lookup`) < command-line flags, except that the policy keys
(``site_binds``, ``deny_binds``, ``allowed_image_paths``, ``allowed_image_owners``, ``allowed_registries``,
``require_signed_images``, ``helper_path``) come only from the site file: a user file that sets one is an
error (saying so), and no environment variable touches them.
They are site-only rather than "may only narrow" because that rule is simple to audit.

The site file is trusted only while the user cannot change it: when it, or ``/etc/yurt``, is
writable by a non-root user, yurt refuses to run.  An unreadable site file is an error too (policy
that cannot be read is not silently dropped).  ``YURT_SITE_CONFIG=FILE`` names another site file,
for tests and for machines without a site file, and is honoured only when ``/etc/yurt/yurt.toml``
does not exist: with no site file there is no policy it could loosen, and with one it is ignored
(``yurt config show`` says so).  Checking for "real root" instead would not work inside a user
namespace, where anyone can be uid 0.

Unknown keys and values of the wrong type are errors naming the file, the key and its line.

Site policy: a policy is *in force* when the site file that was read sets any of the site-only
keys above (:attr:`Config.policy`).  Then yurt assumes the user may be hostile and trusts nothing the
user can change between a check and its use (README, "Site policy and configuration", says it for administrators):
helper programs come only from root-owned directories of ``helper_path`` (:mod:`yurt.programs`); an
image named by path is opened once and checked, then handed on, as that descriptor
(:func:`yurt.image.source.open_image`); an unpacked copy is made per run in the container's own tmpfs,
never taken from the shared node-local cache (:class:`yurt.image.rootfs.ExtractedSquashfs`); and a
registry or OCI image runs from verified, sealed memory copies, never from the user's image cache
(:mod:`yurt.registry.private`).  Without a policy ``PATH`` is searched and ``--unsquash`` storms share
one unpacked copy per node.  Per-user directories in shared places are never trusted, policy or not
(:mod:`yurt.store.userdir`).

What the policy means: yurt runs with the user's own privileges (no setuid, no daemon), so these
rules bind what the installed yurt does, not what the user could do with other tools (their own copy
of yurt, a preloaded library, ``unshare``); they state the site's rules, make sure no file, link,
cache or ``PATH`` entry the user controls can steer yurt around them, and file permissions remain the
security boundary.
"""

from __future__ import annotations

import os

from yurt.errors import ConfigError, ImageError, PolicyError, warn
from yurt.record import Record

SITE_CONFIG = "/etc/yurt/yurt.toml"
SITE_OVERRIDE_ENV = "YURT_SITE_CONFIG"
USER_CONFIG = "yurt/config.toml"  # under $XDG_CONFIG_HOME or ~/.config

# Scopes: where a key may be set.
SITE_ONLY = "site"  # policy: only the site file
CEILING = "ceiling"  # the site's value is a maximum; user file and environment may lower it
DEFAULT = "default"  # default < site < user < environment < flags


class Key(Record):
    """One setting: its TOML type, scope, built-in default, environment variable and meaning."""

    __slots__ = ("name", "kind", "scope", "default", "env", "help")
    _defaults = {"env": None}
    name: str
    kind: str  # binds | paths | owners | registries | bool | count | dir
    scope: str
    default: object
    env: str | None
    help: str


KEYS: dict[str, Key] = {k.name: k for k in (
    Key("site_binds", "binds", SITE_ONLY, (), None, "bound into every container when the source exists"),
    Key("deny_binds", "paths", SITE_ONLY, (), None, "paths users may not bind (nor paths beneath or above them)"),
    Key("allowed_image_paths", "paths", SITE_ONLY, None, None, "images run by path must lie beneath one of these"),
    Key("allowed_image_owners", "owners", SITE_ONLY, None, None, "images run by path must be owned by one of these"),
    Key("allowed_registries", "registries", SITE_ONLY, None, None,
        "registries pull, push, exec docker:// and build may use"),
    Key("require_signed_images", "bool", SITE_ONLY, False, None, "not supported yet: true is an error"),
    Key("helper_path", "paths", SITE_ONLY, ("/usr/libexec/yurt", "/usr/local/sbin", "/usr/local/bin", "/usr/sbin",
                                             "/usr/bin", "/sbin", "/bin"), None,
        "under a site policy, programs yurt runs come only from these root-owned directories"),
    Key("contain", "bool", DEFAULT, False, "YURT_CONTAIN", "run as if --contain were given"),
    Key("squashfs_threads", "count", CEILING, 0, "YURT_SQUASHFS_THREADS",
        "most threads mksquashfs/tar2sqfs may use (0: no limit)"),
    Key("cache_dir", "dir", DEFAULT, "{home}/.cache/yurt", "YURT_CACHEDIR", "image cache (blobs, converted SIFs)"),
    Key("local_cache_dir", "dir", DEFAULT, "/var/tmp/yurt-{uid}", "YURT_LOCAL_CACHEDIR",
        "node-local cache of unpacked images"),
)}

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


class Config:
    """The effective settings: one attribute per key, and ``sources[key]`` saying where it came from."""

    __slots__ = (*KEYS, "sources", "site_file", "user_file", "notes", "policy")

    site_binds: tuple[str, ...]
    deny_binds: tuple[str, ...]
    allowed_image_paths: tuple[str, ...] | None
    allowed_image_owners: tuple[str | int, ...] | None
    allowed_registries: tuple[str, ...] | None
    require_signed_images: bool
    helper_path: tuple[str, ...]
    contain: bool
    squashfs_threads: int
    cache_dir: str
    local_cache_dir: str

    def __init__(self) -> None:
        self.sources: dict[str, str] = {}
        self.site_file: str | None = None  # the site file read, if any
        self.user_file: str | None = None
        self.notes: list[str] = []  # things `config show` should mention (an ignored override)
        self.policy = False  # the site file read sets a site-only key: assume a hostile user (module docstring)

    def as_dict(self) -> dict[str, object]:
        return {name: _plain(getattr(self, name)) for name in KEYS}

    # -- policy checks (pure; the callers decide when they apply) --------------------------------

    def denied_bind(self, path: str) -> str | None:
        """The ``deny_binds`` entry that binding ``path`` would expose (equal, beneath or above), or None."""
        if not self.deny_binds:
            return None
        literal = _norm(path)
        real = os.path.realpath(literal)
        for entry in self.deny_binds:
            entry_real = os.path.realpath(entry)
            for a, b in ((literal, entry), (real, entry_real), (real, entry), (literal, entry_real)):
                if _overlaps(a, b):
                    return entry
        return None

    def check_bind(self, path: str, what: str) -> None:
        denied = self.denied_bind(path)
        if denied is not None:
            raise PolicyError(f"{what} {path} is not allowed: the site denies binding {denied}",
                              f"deny_binds in {self.site_file or SITE_CONFIG}")

    def check_image(self, path: str, fd: int | None = None) -> None:
        """Refuse an image named by path that lies outside ``allowed_image_paths`` or has the wrong owner.

        With ``fd`` (the image as :func:`yurt.image.source.open_image` opened it) both rules are checked
        on that open file: its owner from ``fstat``, its location from ``/proc/self/fd`` (where the kernel
        says the file it opened lives), so swapping a symbolic link after the open changes nothing.
        """
        if self.allowed_image_paths is None and self.allowed_image_owners is None:
            return
        where = self.site_file or SITE_CONFIG
        if fd is not None:
            try:
                st = os.fstat(fd)
                real = os.readlink(f"/proc/self/fd/{fd}")
            except OSError as e:
                raise ImageError(f"cannot check image {path}: {e.strerror}")
            if st.st_nlink == 0 or not real.startswith("/"):
                raise ImageError(f"image {path} was removed while it was being opened", "try again")
        else:
            real = os.path.realpath(path)
        if self.allowed_image_paths is not None:
            prefixes = [p for entry in self.allowed_image_paths for p in (entry, os.path.realpath(entry))]
            if not any(_beneath(real, p) for p in prefixes):
                allowed = ", ".join(self.allowed_image_paths) or "none"
                raise PolicyError(f"image {path} is not in a location the site allows ({allowed})",
                                  f"allowed_image_paths in {where}")
        if self.allowed_image_owners is not None:
            try:
                uid = os.fstat(fd).st_uid if fd is not None else os.stat(real).st_uid
            except OSError as e:
                raise ImageError(f"cannot check the owner of image {path}: {e.strerror}")
            uids = {_owner_uid(o, where) for o in self.allowed_image_owners}
            if uid not in uids:
                allowed = ", ".join(str(o) for o in self.allowed_image_owners) or "nobody"
                raise PolicyError(f"image {path} is owned by {_user_name(uid)}; the site allows only images "
                                  f"owned by {allowed}", f"allowed_image_owners in {where}")

    def thread_limit(self, n: int) -> int:
        """``n`` squashfs threads capped by ``squashfs_threads``."""
        return min(n, self.squashfs_threads) if self.squashfs_threads > 0 else n


# --- where the files are ----------------------------------------------------------------------


def site_path(environ: dict[str, str] | os._Environ | None = None) -> tuple[str, str | None]:
    """The site file to read, and a note when ``YURT_SITE_CONFIG`` was ignored."""
    env = os.environ if environ is None else environ
    override = env.get(SITE_OVERRIDE_ENV)
    if not override:
        return SITE_CONFIG, None
    if _site_file_may_exist():
        return SITE_CONFIG, f"{SITE_OVERRIDE_ENV}={override} is ignored: {SITE_CONFIG} exists"
    return os.path.abspath(override), None


def _site_file_may_exist() -> bool:
    """Only a site file that is certainly absent lets ``YURT_SITE_CONFIG`` in: one we cannot even look
    at (``/etc/yurt`` not searchable) may hold policy, so it counts as present (and reading it fails)."""
    try:
        os.lstat(SITE_CONFIG)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return True


SITE_CONFDIR = "/etc/yurt"


def sysconf_path(name: str, env: dict[str, str]) -> str:
    """``/etc/yurt/NAME``; ``$YURT_SYSCONFDIR/NAME`` only while the real one does not exist.

    The site's other files (``hooks.d``, ``nvliblist.conf``...).  Tests and machines without a
    site configuration can point yurt elsewhere, but a user cannot hide the site's own hooks or
    lists this way.
    """
    real = os.path.join(SITE_CONFDIR, name)
    alt = env.get("YURT_SYSCONFDIR")
    if alt and not os.path.exists(real):
        return os.path.join(alt, name)
    return real


def user_path(environ: dict[str, str] | os._Environ | None = None) -> str:
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(_home(env), ".config")
    return os.path.join(base, USER_CONFIG)


def _home(env) -> str:
    home = env.get("HOME")
    if home:
        return home
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return "/"


# --- loading ------------------------------------------------------------------------------------

ENV_PREFIXES = ("YURT_", "APPTAINER_", "SINGULARITY_")
_env_warned: set[str] = set()


def env_lookup(keys: tuple[str, ...], environ=None, norm=None) -> tuple[str, str] | None:
    """``(name, value)`` of the first set of ``YURT_<KEY>``, ``APPTAINER_<KEY>``, ``SINGULARITY_<KEY>`` (each
    prefix with every key before the next prefix), or None: how yurt reads every setting from the environment,
    so Apptainer's names work too.  When another is set to a different value (as ``norm`` sees it), one
    warning line per process says which one is used."""
    env = os.environ if environ is None else environ
    found = [(p + k, env[p + k]) for p in ENV_PREFIXES for k in keys if p + k in env]
    if not found:
        return None
    name, value = found[0]
    same = norm or (lambda v: v)
    other = next((n for n, v in found[1:] if same(v) != same(value)), None)
    if other is not None and name not in _env_warned:
        _env_warned.add(name)
        if env.get("YURT_QUIET", "").lower() not in _TRUE:
            warn(f"{name} and {other} differ; using {name} (YURT_ wins, then APPTAINER_, then SINGULARITY_)")
    return found[0]


def bool_text(value: str) -> object:
    low = value.strip().lower()
    return True if low in _TRUE else False if low in _FALSE else low


# (path, device, inode, size, mtime) -> the file's validated settings; a process reads a file once.
_parsed: dict[tuple, dict[str, object]] = {}


def load(environ: dict[str, str] | os._Environ | None = None) -> Config:
    """The effective configuration for this process (files are parsed once; the environment is read each call)."""
    env = os.environ if environ is None else environ
    site, note = site_path(env)
    user = user_path(env)
    site_values = _read(site, "site", env)
    user_values = _read(user, "user", env)
    cfg = Config()
    if note:
        cfg.notes.append(note)
    if site_values is not None:
        cfg.site_file = site
    if user_values is not None:
        cfg.user_file = user
    site_label, user_label = f"site file {site}", f"user file {user}"
    for name, key in KEYS.items():
        value, source = key.default, "default"
        if site_values and name in site_values:
            value, source = site_values[name], site_label
        if key.scope == SITE_ONLY:
            _set(cfg, name, value, source)
            continue
        requested, req_source = None, None
        if user_values and name in user_values:
            requested, req_source = user_values[name], user_label
        hit = env_lookup((key.env[5:],), env, bool_text if key.kind == "bool" else None) if key.env else None
        if hit is not None and (hit[1] != "" or key.kind == "bool"):
            requested, req_source = _from_env(key, hit[1], env, hit[0]), f"env {hit[0]}"
        if key.scope == CEILING and source != "default" and value:
            if requested is not None and 0 < requested <= value:  # type: ignore[operator]
                value, source = requested, req_source or source
        elif requested is not None:
            value, source = requested, req_source or source
        if key.kind == "dir" and source == "default":
            value = _expand(str(value), env, "built-in default", name)
        _set(cfg, name, value, source)
    cfg.policy = bool(site_values) and any(KEYS[name].scope == SITE_ONLY for name in site_values)
    if cfg.require_signed_images:
        raise ConfigError(f"{site}: require_signed_images = true cannot be honoured: yurt cannot sign or verify "
                          "images yet", "remove the setting or set it to false until signing exists")
    return cfg


def _set(cfg: Config, name: str, value: object, source: str) -> None:
    setattr(cfg, name, value)
    cfg.sources[name] = source


def _read(path: str, which: str, env) -> dict[str, object] | None:
    """The validated settings of one file, or None when it does not exist."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise ConfigError(f"cannot read the {which} config {path}: {e.strerror}")
    key = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    cached = _parsed.get(key)
    if cached is not None:
        return cached
    from yurt import configfile  # only once a file exists: without one, yurt exec never loads it

    if which == "site" and path == SITE_CONFIG:
        configfile.check_trusted(path)
    text, doc = configfile.read_document(path, which)
    values = _validate(doc, path, text, which, env)
    _parsed[key] = values
    return values


def _validate(doc: dict, path: str, text: str, which: str, env) -> dict[str, object]:
    from yurt.configfile import where as _where

    out: dict[str, object] = {}
    for name, raw in doc.items():
        key = KEYS.get(name)
        if key is None:
            known = ", ".join(KEYS)
            raise ConfigError(f"{_where(path, text, name)}unknown key {name!r}", f"known keys: {known}")
        if which == "user" and key.scope == SITE_ONLY:
            raise ConfigError(f"{_where(path, text, name)}{name} is site policy: only {SITE_CONFIG} may set it",
                              "remove it from your config file")
        try:
            out[name] = _CHECKERS[key.kind](raw, env)
        except ValueError as e:
            raise ConfigError(f"{_where(path, text, name)}{name}: {e}")
    return out


def _from_env(key: Key, raw: str, env, name: str) -> object:
    try:
        if key.kind == "bool":
            low = raw.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(f"expects true or false, got {raw!r}")
        if key.kind == "dir":
            return _norm(os.path.abspath(raw))  # taken literally, relative to the current directory
        return _CHECKERS[key.kind](int(raw) if key.kind == "count" and raw.strip().isdigit() else raw, env)
    except ValueError as e:
        raise ConfigError(f"environment variable {name}: {e}")


# --- value checkers: TOML value -> stored value, ValueError with the reason ---------------------


def _string_list(raw: object, what: str) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise ValueError(f"expected a list of {what}, got {_type_name(raw)}")
    return raw


def _paths(raw: object, env) -> tuple[str, ...]:
    out = []
    for p in _string_list(raw, "absolute paths"):
        if not p.startswith("/"):
            raise ValueError(f"{p!r} is not an absolute path")
        out.append(_norm(p))
    return tuple(out)


def _binds(raw: object, env) -> tuple[str, ...]:
    for spec in _string_list(raw, '"src[:dst[:ro|rw]]" strings'):
        parse_bind(spec)
    return tuple(raw)  # type: ignore[arg-type]


def parse_bind(spec: str) -> tuple[str, str, bool]:
    """``src[:dst[:ro|rw]]`` of a site bind -> (source, destination, read-only); both absolute."""
    parts = spec.split(":")
    if len(parts) > 3 or not parts[0]:
        raise ValueError(f"bad bind {spec!r}: use src[:dst[:ro|rw]]")
    src = parts[0]
    dst = parts[1] if len(parts) > 1 and parts[1] else src
    opt = parts[2] if len(parts) > 2 else "rw"
    if len(parts) == 2 and parts[1] in ("ro", "rw"):
        dst, opt = src, parts[1]
    if opt not in ("ro", "rw"):
        raise ValueError(f"bad bind option {opt!r} in {spec!r}: use ro or rw")
    if not src.startswith("/") or not dst.startswith("/"):
        raise ValueError(f"bind {spec!r}: source and destination must be absolute paths")
    return _norm(src), _norm(dst), opt == "ro"


def _owners(raw: object, env) -> tuple[str | int, ...]:
    if not isinstance(raw, list):
        raise ValueError(f"expected a list of user names or uids, got {_type_name(raw)}")
    for o in raw:
        if isinstance(o, bool) or not isinstance(o, (str, int)) or (isinstance(o, int) and o < 0) or o == "":
            raise ValueError(f"{o!r} is not a user name or uid")
    return tuple(raw)


def _registries(raw: object, env) -> tuple[str, ...]:
    out = []
    for r in _string_list(raw, '"host[:port][/prefix]" strings'):
        r = r.strip().rstrip("/")
        if not r or "://" in r or any(c.isspace() for c in r) or r.startswith("/"):
            raise ValueError(f"{r!r} is not host[:port][/repository-prefix] (no scheme)")
        out.append(r)
    return tuple(out)


def _bool(raw: object, env) -> bool:
    if not isinstance(raw, bool):
        raise ValueError(f"expected true or false, got {_type_name(raw)}")
    return raw


def _count(raw: object, env) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise ValueError(f"expected a whole number >= 0, got {raw!r}")
    return raw


def _dir(raw: object, env) -> str:
    if not isinstance(raw, str) or not raw:
        raise ValueError(f"expected a path, got {_type_name(raw)}")
    return _expand(raw, env, "value", None)


_CHECKERS = {"paths": _paths, "binds": _binds, "owners": _owners, "registries": _registries, "bool": _bool,
             "count": _count, "dir": _dir}


def _expand(raw: str, env, what: str, name: str | None) -> str:
    """``{uid}``, ``{user}``, ``{home}`` -> the user's; the result must be absolute."""
    value = raw.replace("{uid}", str(os.getuid())).replace("{home}", _home(env))
    if "{user}" in value:
        import pwd

        try:
            user = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:
            user = env.get("USER") or str(os.getuid())
        value = value.replace("{user}", user)
    if not value.startswith("/"):
        raise ValueError(f"{raw!r} is not an absolute path (after {{uid}}/{{user}}/{{home}} are filled in)")
    return _norm(value)


def _type_name(raw: object) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(raw), type(raw).__name__)


# --- helpers ------------------------------------------------------------------------------------


def _norm(path: str) -> str:
    import posixpath

    return "/" + posixpath.normpath(path).lstrip("/")


def _beneath(path: str, prefix: str) -> bool:
    return prefix == "/" or path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _overlaps(a: str, b: str) -> bool:
    return _beneath(a, b) or _beneath(b, a)


def _owner_uid(owner: str | int, where: str) -> int:
    if isinstance(owner, int):
        return owner
    import pwd

    try:
        return pwd.getpwnam(owner).pw_uid
    except KeyError:
        raise ConfigError(f"{where}: allowed_image_owners: no user {owner!r} on this machine")


def _user_name(uid: int) -> str:
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _plain(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value
