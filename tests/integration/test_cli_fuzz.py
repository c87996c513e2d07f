"""Property-based test of the whole command line: no internal error, no silent acceptance.

Every command (``COMMANDS`` in :mod:`yurt.cli`; instance, registry, cache and config once per
subcommand) is driven with generated argument vectors: its real flags from its ``FLAGS`` table in
every spelling (``--name``, ``--name=V``, ``-xV``, bundled ``-abc``, aliases), repeated,
abbreviated, unknown and value-less flags, and values mixing good ones with empty, unicode,
undecodable, very long and malformed ones; hostile files (empty, binary garbage, a 64 GiB sparse
file, a FIFO, dangling and looping symlinks, directories, unreadable files, ``/dev/zero``, a
truncated SIF, SIFs with corrupt descriptors, recipes and env files with NULs and Latin-1) as images,
sources, recipes and option values; and environment values (``YURT_<FLAG>`` for the command's
flags, ``YURT_CACHEDIR`` and the other directories, a site file, a user config file).

The strategies (vocabulary, argument vectors, and how each is judged) are in :mod:`clifuzz`; the
fork server that runs an example is :mod:`clirunner`.

The rule, checked on every example (:func:`check`):

* the command ends within the deadline and is not killed by a signal;
* stderr never contains a Python traceback, ``internal error`` or ``Exception ignored`` (with
  ``--debug`` / ``YURT_DEBUG`` a traceback may precede the error line: that is what ``--debug`` is for);
* exit status 0: no ``yurt: error:`` line at all;
* any other status: the **last** line of stderr is the one and only ``yurt: error: MESSAGE`` line,
  MESSAGE is not empty and is not a bare ``strerror`` ("Permission denied": an OS error must say
  what it was doing to which path); every line before it is one of yurt's own (it starts with
  ``yurt: `` -- warnings, notices, progress, ``--debug`` output); stdout may hold a prompt or partial
  output;
* a vector that is invalid by construction (an unknown or abbreviated option, a value-taking option
  without its value, a malformed number or boolean, an out-of-range number, a malformed ``--bind``,
  too many or too few arguments where the count is fixed) exits non-zero -- unless ``--help`` made
  it print usage first, which only a value check after parsing may lose to.

Isolation: each example runs ``yurt.cli.main(argv)`` in a forked child (:mod:`clirunner`) with stdin
``/dev/null``, a 20 s deadline, a 4 GiB address-space limit, ``HOME``, ``XDG_*``, ``YURT_CACHEDIR``,
``YURT_LOCAL_CACHEDIR``, ``YURT_RUNTIMEDIR`` and ``REGISTRY_AUTH_FILE`` in a private directory, and a
``PATH`` without Slurm's client commands.  The vocabulary never names a host directory as an image,
a build source or a bind source, never a real registry (registries are 127.0.0.1 on a closed port,
and the proxy variables point there too, so even a stray name never leaves the machine), and never
an existing program as a container payload -- except in the fixtures' tiny sandbox, where busybox's
``true``, its ``sh`` without arguments and run/test scripts that ``exit 0`` succeed, so that a valid
vector exits 0 there and an invalid option accepted silently shows.  Generated free text in a path
position is prefixed so that it names nothing.  The fixture files are read-only; what a command
writes lands in ``out/``, emptied before every example.  Not run as root (a generated vector could
then write anywhere).  Nothing may outlive the examples (checked when the module ends).

Sizes: ``YURT_FUZZ_PROFILE=ci`` (the default, and what CI runs) makes at least 2,000 examples for
every leaf subcommand: each command of ``COMMANDS``, each subcommand of instance (start, list, stop),
registry (login, logout, list), cache (list, clean) and config (show), and the top level; from fixed
seeds so that CI is reproducible (the test fails if hypothesis ran fewer).  ``dev`` makes 200 with
fresh randomness each run; ``YURT_FUZZ_EXAMPLES=N`` overrides the count.  A target's examples are
split over ``YURT_FUZZ_WORKERS`` forked processes (default: 2, or 1 on a single CPU), since
hypothesis runs one at a time.  No example database is written.  Measured cost: 7-15 ms of CPU an
example on a 2-CPU VM (most of it the fork); 2-3 in 100 examples of the launching commands start a
container (100-300 ms).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import struct
import tempfile
import traceback
import zlib

import hypothesis
import pytest
from clifuzz import CLOSED, INT_RANGES, RECIPES, TARGETS, USER_CONFIGS, Target, Vector, vectors
from clirunner import ForkServer
from hypothesis import HealthCheck, given, settings

pytestmark = pytest.mark.skipif(os.geteuid() == 0, reason="runs generated command lines: only as an ordinary user")

settings.register_profile(
    "ci", max_examples=2000, derandomize=True, database=None, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.register_profile(
    "dev", max_examples=200, derandomize=False, database=None, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
_PROFILE = settings.get_profile(os.environ.get("YURT_FUZZ_PROFILE", "ci"))
if os.environ.get("YURT_FUZZ_EXAMPLES"):
    _PROFILE = settings(_PROFILE, max_examples=int(os.environ["YURT_FUZZ_EXAMPLES"]))

# Worker processes per target: hypothesis runs one example at a time, so a second CPU needs a second run.
WORKERS = int(os.environ.get("YURT_FUZZ_WORKERS", "0")) or min(2, len(os.sched_getaffinity(0)))
DEADLINE = 20.0
SLURM_CLIENTS = {"srun", "salloc", "sbatch", "sattach", "scontrol", "squeue", "sinfo", "scancel", "sacct", "sstat"}
BARE_STRERRORS = {os.strerror(n) for n in errno.errorcode}


# --------------------------------------------------------------------------- the arena


STATE_DIRS = ("home", "cache", "local", "run", "xdg", "tmp")
OUT_DIRS = ("dir", "dir2")


class Arena:
    """The private tree every example runs in (see the module docstring)."""

    def __init__(self, root: str, lane: int = 0) -> None:
        self.root = root
        self.ro = os.path.join(root, "ro")  # hostile fixtures, read-only
        self.bin = os.path.join(root, "bin")
        self.conf = os.path.join(root, "conf")  # user config dirs (XDG_CONFIG_HOME) and site files
        # One working directory and state tree per worker process (see test_cli_fuzz).
        self.out = os.path.join(root, f"out{lane}")  # the working directory; emptied before each example
        self.state = os.path.join(root, f"state{lane}")  # HOME, caches, runtime dirs; recreated likewise
        self._snapshot: list | None = None

    def lane(self, n: int) -> Arena:
        return Arena(self.root, n)

    def reset(self) -> None:
        """Back to empty out/ and state/ trees; a no-op when no directory of them changed (the
        usual case: metadata operations are slow on some disks, a few stats are not)."""
        if self._snapshot and self._snapshot == self._look():
            return
        for d in (self.out, self.state):
            if os.path.lexists(d):
                _rmtree(d)
            os.mkdir(d)
        for sub in STATE_DIRS:
            os.mkdir(os.path.join(self.state, sub), 0o700)
        for sub in OUT_DIRS:
            os.mkdir(os.path.join(self.out, sub))
        self._snapshot = self._look()

    def _look(self) -> list[tuple[int, int, int, int, int]] | None:
        """Inode, mode, mtime and ctime of every directory of the empty trees: creating, removing or
        renaming anything in them, or a chmod, changes one."""
        try:
            return [(st.st_ino, st.st_mode, st.st_mtime_ns, st.st_ctime_ns, st.st_nlink) for st in map(os.lstat, [
                self.out, self.state, *(os.path.join(self.out, d) for d in OUT_DIRS),
                *(os.path.join(self.state, d) for d in STATE_DIRS)])]
        except OSError:
            return None

    def env(self, extra: dict[str, str]) -> dict[str, str]:
        s = self.state
        base = {
            "PATH": self.bin, "LANG": "C.UTF-8", "HOME": f"{s}/home", "USER": "yurttest", "LOGNAME": "yurttest",
            "TMPDIR": f"{s}/tmp", "XDG_RUNTIME_DIR": f"{s}/xdg", "XDG_CONFIG_HOME": f"{self.conf}/none",
            "YURT_CACHEDIR": f"{s}/cache", "YURT_LOCAL_CACHEDIR": f"{s}/local", "YURT_RUNTIMEDIR": f"{s}/run",
            "YURT_TMPDIR": f"{s}/tmp", "REGISTRY_AUTH_FILE": f"{s}/home/auth.json",
            "YURT_DRIVER_ROOT": f"{self.ro}/emptydir", "SLURM_CONF": "/nonexistent",
            "http_proxy": f"http://{CLOSED}", "https_proxy": f"http://{CLOSED}", "all_proxy": f"http://{CLOSED}",
            "HTTP_PROXY": f"http://{CLOSED}", "HTTPS_PROXY": f"http://{CLOSED}", "ALL_PROXY": f"http://{CLOSED}",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        base.update(extra)
        return base


def _rmtree(path: str) -> None:
    for root, dirs, _ in os.walk(path):  # an example may leave a 0500 or 0 directory behind
        for d in dirs:
            p = os.path.join(root, d)
            if not os.path.islink(p):
                os.chmod(p, 0o700)
    shutil.rmtree(path)


def _make_tiny(root: str) -> None:
    """A sandbox whose payloads succeed (busybox as /bin/true and /bin/sh; run and test scripts that
    exit 0): the one image on which a valid vector exits 0, so that an invalid option that is
    accepted silently shows.  Without /bin/busybox it is an empty directory, and nothing succeeds."""
    os.makedirs(os.path.join(root, "bin"))
    os.makedirs(os.path.join(root, ".singularity.d"))
    if not os.path.isfile("/bin/busybox"):
        return
    shutil.copy("/bin/busybox", os.path.join(root, "bin", "busybox"))
    for name in ("sh", "true"):
        os.symlink("busybox", os.path.join(root, "bin", name))
    for name in ("runscript", "test"):
        script = os.path.join(root, ".singularity.d", name)
        with open(script, "w") as f:
            f.write("#!/bin/sh\nexit 0\n")
        os.chmod(script, 0o755)


def _make_sifs(ro: str) -> None:
    from yurt.image import pack, sif

    content = os.path.join(ro, "sifsrc")
    os.makedirs(os.path.join(content, "etc"))
    with open(os.path.join(content, "etc", "hello"), "w") as f:
        f.write("hello\n")
    good = os.path.join(ro, "good.sif")
    pack.build_sif(content, good, compression="gzip")
    shutil.rmtree(content)
    raw = open(good, "rb").read()
    with open(os.path.join(ro, "trunc-header.sif"), "wb") as f:
        f.write(raw[:100])
    with open(os.path.join(ro, "trunc-half.sif"), "wb") as f:
        f.write(raw[: len(raw) // 2])
    table = sif.DESCRIPTORS_OFFSET
    part = next(i for i in range(64) if struct.unpack_from("<i", raw, table + i * sif.DESCRIPTOR_SIZE)[0]
                == sif.DataType.PARTITION)
    at = sif.DESCRIPTORS_OFFSET + part * sif.DESCRIPTOR_SIZE
    for name, field, value in (("corrupt-offset.sif", 17, len(raw) * 4), ("corrupt-size.sif", 25, -1),
                               ("corrupt-partition.sif", 17, 0), ("corrupt-fstype.sif", 17 + 7 * 8 + 128, 99)):
        fmt = "<i" if field > 100 else "<q"
        data = bytearray(raw)
        struct.pack_into(fmt, data, at + field, value)
        if name == "corrupt-partition.sif":  # points at the SIF header: squashfs magic missing
            struct.pack_into("<q", data, at + 25, 4096)
        with open(os.path.join(ro, name), "wb") as f:
            f.write(bytes(data))


@pytest.fixture(scope="module")
def arena(tmp_path_factory: pytest.TempPathFactory) -> Arena:
    # On tmpfs when there is one: examples create and remove directories, which costs milliseconds
    # each on an ext4 mounted with discard.
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        root = tempfile.mkdtemp(prefix="yurt-clifuzz-", dir=shm)
    else:
        root = str(tmp_path_factory.mktemp("clifuzz"))
    try:
        yield _build_arena(root)
        left = _leftovers(root)
        assert not left, f"processes outlived their examples: {left}"
    finally:
        for pid in _leftovers(root):
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        for r, dirs, _ in os.walk(root):
            for n in dirs:
                if not os.path.islink(os.path.join(r, n)):
                    os.chmod(os.path.join(r, n), 0o700)
        shutil.rmtree(root, ignore_errors=True)


def _leftovers(root: str) -> list[int]:
    """Our processes that carry the arena in their environment: forks of a fork server (tagged with
    it) and whatever an example executed (its environment names the arena)."""
    found = []
    needle = root.encode()
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    if needle in f.read():
                        found.append(int(name))
            except OSError:
                continue
    return found


def _build_arena(root: str) -> Arena:
    a = Arena(root)
    for d in (a.ro, a.bin, a.conf):
        os.mkdir(d)
    for name, data in RECIPES.items():
        with open(os.path.join(a.ro, name), "wb") as f:
            f.write(data)
    with open(os.path.join(a.ro, "huge.img"), "wb") as f:
        f.truncate(64 << 30)  # sparse
    os.mkfifo(os.path.join(a.ro, "fifo"))
    os.symlink("nonexistent-target", os.path.join(a.ro, "dangling"))
    os.symlink("loop", os.path.join(a.ro, "loop"))
    os.mkdir(os.path.join(a.ro, "emptydir"))
    os.mkdir(os.path.join(a.ro, "junkdir"))
    os.mkfifo(os.path.join(a.ro, "junkdir", "fifo"))
    os.symlink("/nonexistent", os.path.join(a.ro, "junkdir", "dangling"))
    for name, data in (("Dockerfile", RECIPES["Dockerfile"]), ("x.def", RECIPES["broken.def"])):
        with open(os.path.join(a.ro, "junkdir", name), "wb") as f:
            f.write(data)
    with open(os.path.join(a.ro, "unreadable"), "wb") as f:
        f.write(b"secret")
    os.chmod(os.path.join(a.ro, "unreadable"), 0)
    os.mkdir(os.path.join(a.ro, "unreadable-dir"), 0)
    _make_sifs(a.ro)
    _make_tiny(os.path.join(a.ro, "tiny"))
    for name, data in USER_CONFIGS.items():
        os.makedirs(os.path.join(a.conf, name, "yurt"))
        if data is not None:
            with open(os.path.join(a.conf, name, "yurt", "config.toml"), "wb") as f:
                f.write(data)
    with open(os.path.join(a.conf, "site.toml"), "wb") as f:
        f.write(b'allowed_image_paths = ["/nonexistent"]\ndeny_binds = ["/"]\n')
    with open(os.path.join(a.conf, "badsite.toml"), "wb") as f:
        f.write(b"allowed_image_owners = 7\n\xff\n")
    # PATH: the machine's programs without Slurm's clients (srun would wait for a controller).
    for d in ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        if not os.path.isdir(d) or os.path.islink(d):
            continue
        for name in os.listdir(d):
            link = os.path.join(a.bin, name)
            if name not in SLURM_CLIENTS and not os.path.lexists(link):
                os.symlink(os.path.join(d, name), link)
    for root, dirs, files in os.walk(a.ro):
        for n in dirs:
            p = os.path.join(root, n)
            if n != "unreadable-dir":
                os.chmod(p, 0o555)
        for n in files:
            p = os.path.join(root, n)
            mode = os.lstat(p).st_mode
            if stat.S_ISREG(mode) and n != "unreadable":
                os.chmod(p, 0o555 if mode & 0o100 else 0o444)
    os.chmod(a.ro, 0o555)
    return a


# --------------------------------------------------------------------------- the rule


def check(vector: Vector, outcome) -> None:
    """The rule of the module docstring."""
    where = (f"\n{vector!r}\nexit {outcome.status}\nstdout: {outcome.stdout[-2000:]!r}"
             f"\nstderr: {outcome.stderr[-4000:]!r}")
    assert not outcome.timed_out, f"no answer within {DEADLINE} s{where}"
    assert outcome.status >= 0, f"killed by signal {-outcome.status}{where}"
    err = outcome.stderr.decode("utf-8", "replace")
    debug = any(a in ("-d", "--debug") for a in vector.argv[:3]) or vector.env.get("YURT_DEBUG", "").lower() in (
        "1", "true", "yes", "on")
    assert "internal error" not in err, f"internal error{where}"
    assert "Exception ignored" not in err, f"an exception escaped{where}"
    if not debug:
        assert "Traceback (most recent call last)" not in err, f"traceback{where}"
    lines = err.splitlines()
    errors = [ln for ln in lines if ln.startswith("yurt: error:")]
    if outcome.status == 0:
        assert not errors, f"exit 0 with an error line{where}"
        return
    assert len(errors) == 1, f"exit {outcome.status} with {len(errors)} error lines{where}"
    assert lines[-1] == errors[0], f"the error line is not the last line of stderr{where}"
    message = errors[0][len("yurt: error:"):].strip()
    assert message, f"empty error message{where}"
    assert message not in BARE_STRERRORS, f"a bare OS error, no path or action{where}"
    if not debug:
        strays = [ln for ln in lines[:-1] if not ln.startswith("yurt: ")]
        assert not strays, f"stderr lines that are not yurt's{where}"


def _expect(vector: Vector, outcome) -> None:
    check(vector, outcome)
    if vector.invalid or (vector.late_invalid and not vector.helped):
        assert outcome.status != 0, (f"accepted an invalid command line ({vector.invalid or vector.late_invalid})"
                                     f"\n{vector!r}\nstdout: {outcome.stdout[-2000:]!r}")


def run_vector(arena: Arena, server: ForkServer, vector: Vector):
    arena.reset()
    return server.run(vector.argv, arena.env(vector.env), arena.out, timeout=DEADLINE)


def _fuzz(arena: Arena, target: Target, examples: int, seed: int | None) -> int:
    """Hypothesis' run for one target: ``examples`` vectors (from ``seed``, else as the profile says).
    Returns how many examples it ran."""
    server = ForkServer(arena.root)
    ran = 0
    try:
        @settings(_PROFILE, max_examples=examples, derandomize=_PROFILE.derandomize and seed is None)
        @given(vectors(target, arena.ro, arena.conf))
        def prop(vector: Vector) -> None:
            nonlocal ran
            ran += 1
            _expect(vector, run_vector(arena, server, vector))

        (hypothesis.seed(seed)(prop) if seed is not None else prop)()
    finally:
        server.close()
    return ran


@pytest.mark.parametrize("name", list(TARGETS))
def test_cli_fuzz(arena: Arena, name: str) -> None:
    """The examples of one target, split over WORKERS forked copies of this process (hypothesis runs
    one example at a time: two CPUs take two runs), each with its own seed, fork server and lane."""
    target = TARGETS[name]
    total = _PROFILE.max_examples
    if WORKERS == 1:
        ran = _fuzz(arena.lane(0), target, total, None)
        assert ran >= total, f"hypothesis ran {ran} examples of {name}, not {total}"
        return
    base = zlib.crc32(name.encode()) if _PROFILE.derandomize else int.from_bytes(os.urandom(4), "little")
    workers = []
    for i in range(WORKERS):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # a worker: never returns into pytest
            status = 1
            try:
                os.close(r)
                lines: list[str] = []
                try:
                    with hypothesis.reporting.with_reporter(lines.append):
                        ran = _fuzz(arena.lane(i), target, -(-total // WORKERS), base + i)
                    lines.insert(0, f"ran {ran}")
                    status = 0
                except BaseException as e:  # noqa: BLE001 - reported to the parent
                    lines += traceback.format_exception(e)
                    lines.append(f"(worker {i} of {WORKERS}, seed {base + i}; rerun with YURT_FUZZ_WORKERS=1 "
                                 "to get the same kind of failure in one process)")
                with os.fdopen(w, "w", errors="backslashreplace") as f:
                    f.write("\n".join(lines))
            finally:
                os._exit(status)
        os.close(w)
        workers.append((pid, r))
    reports = []
    ran = 0
    try:
        for pid, r in workers:
            with os.fdopen(r, errors="replace") as f:
                text = f.read()
            _, status = os.waitpid(pid, 0)
            if status != 0:
                reports.append(text or f"worker {pid} died (status {status})")
            elif text.startswith("ran "):
                ran += int(text.split(None, 2)[1])
    finally:
        for pid, _ in workers:
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
    assert not reports, "\n\n".join(reports)
    assert ran >= total, f"hypothesis ran {ran} examples of {name}, not {total}"


# What the fuzzer found (and the known cases), as the smallest vectors: each must keep passing
# the rule, and exit 0 (None) or fail with an error line containing the given text.  {RO} is the
# fixtures' directory; {RO}/tiny is the sandbox whose payloads succeed.
FOUND = [
    (["config", "show", "--yurt-fuzz-\x04i\r\udcc1"], {}, "--yurt-fuzz-\\x04i\\r"),  # \r split the line
    (["version", "--zz"], {}, "unknown option --zz"),  # version ignored its arguments
    (["version", ""], {}, "unexpected argument"),
    (["help", "exec", "extra"], {}, "unexpected argument"),
    (["exec"], {"YURT_HELP": "1"}, "exec needs an image"),  # printed the usage and exited 0
    (["registry"], {}, "registry needs an action"),  # usage on stdout, exit 255, no error line
    (["registry", "login", "127.0.0.1:9"], {}, "not a terminal"),  # internal error: EOFError from input()
    (["registry", "list", "extra"], {}, "unexpected argument"),
    (["srun"], {}, "srun needs an image"),  # exited 0
    (["srun", "--yurt", "a 'b", "--image", "x", "--", "true"], {}, "--yurt"),  # internal error: ValueError
    (["exec", "-B", ":", "{RO}/tiny", "/bin/true"], {}, "bad bind"),  # bound the working directory
    (["exec", "-B", ",,,", "{RO}/tiny", "/bin/true"], {}, "bad bind list"),  # bound nothing, silently
    (["exec", "-B", "", "{RO}/tiny", "/bin/true"], {}, None),  # as in Apptainer: no bind
    (["exec", "--writable-tmpfs-size", "-1", "{RO}/tiny", "/bin/true"], {}, "out of range"),
    (["exec", "--overlay", "/nonexistent", "{RO}/tiny", "/bin/true"], {}, "overlay /nonexistent"),  # EACCES
    (["run", "{RO}/tiny"], {"YURT_HOSTNAME": "\u0318&\udc85"}, "bad --hostname"),  # UnicodeEncodeError
    (["cache", "list", "-j"], {"YURT_SITE_CONFIG": "{RO}/fifo"}, None),  # hung reading the FIFO
    (["config", "show"], {"YURT_SITE_CONFIG": "{RO}/fifo"}, None),
    (["convert", "{RO}/latin1.def"], {}, "not UTF-8 text (byte 0xe9"),  # internal error: UnicodeDecodeError
    (["convert", "/dev/zero"], {}, "larger than"),  # read until memory ran out
    (["instance", "stop", "--all", "x"], {}, "not both"),  # the names were ignored
    (["instance", "stop", "-s", "NOPE", "-F", "x"], {}, "unknown signal"),  # the bad signal was ignored
    (["pull", "oci-archive:{RO}/fifo"], {}, "not a regular file"),  # hung opening the FIFO
    (["exec", "{RO}/tiny", "yurt-fuzz-none"], {}, "yurt-fuzz-none: command not found"),  # in sh's words
    (["exec", ".", ""], {}, "the command is empty"),  # internal error: ValueError from execve
    (["run", "--app", "", "{RO}/tiny"], {}, None),  # an empty value leaves an option unset, as in Apptainer
    (["test", "--env", "\u00e9=1", "{RO}/tiny"], {}, "--env expects KEY=VALUE"),  # broke the env script
    (["build", "zz-\udcee", "{RO}/emptydir"], {}, None),  # built, then UnicodeEncodeError printing the name
    (["pull", "docker://127.0.0.1:9/a/b"], {"REGISTRY_AUTH_FILE": "{RO}/latin1.def"}, "is not valid JSON"),
    (["push", "--ca-file", "{RO}/fifo", "{RO}/good.sif", "docker://127.0.0.1:9/a/b:1"], {}, "CA file"),  # hung
]


@pytest.mark.parametrize("argv,env,expect", FOUND, ids=[" ".join(v[0])[:40] for v in FOUND])
def test_found_by_fuzzing(arena: Arena, argv: list[str], env: dict[str, str], expect: str | None) -> None:
    if "{RO}/tiny" in argv and not os.path.exists(os.path.join(arena.ro, "tiny", "bin", "true")):
        pytest.skip("no /bin/busybox for the tiny sandbox")
    fill = lambda text: text.replace("{RO}", arena.ro)  # noqa: E731
    vector = Vector([fill(a) for a in argv], {k: fill(v) for k, v in env.items()}, expect and "known bad",
                    False, None)
    server = ForkServer(arena.root)
    try:
        outcome = run_vector(arena.lane(0), server, vector)
    finally:
        server.close()
    _expect(vector, outcome)
    last = outcome.stderr.decode("utf-8", "replace").splitlines()[-1:]
    if expect is None:
        assert outcome.status == 0, f"exit {outcome.status}: {outcome.stderr!r}"
    else:
        assert last and expect in last[0], f"expected {expect!r} in the error line: {outcome.stderr!r}"


def test_every_int_flag_has_a_range() -> None:
    ints = {f.name for t in TARGETS.values() for f in t.flags if f.kind == "int"}
    assert ints == set(INT_RANGES), "give each int flag its range in INT_RANGES (and bounds= in its table)"
