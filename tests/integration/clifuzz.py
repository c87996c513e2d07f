"""The vocabulary and the argument vectors of the property-based CLI test (``test_cli_fuzz.py``).

Hypothesis strategies for every command's flags and values, images, references, payloads and
environment values, each judged as it is drawn: a :class:`Vector` says why it is invalid by
construction (or None when it may be valid), which is what the test's silent-acceptance check uses.
Nothing here runs yurt.  The fixture files the vocabulary names (``RECIPES``, ``FILE_NAMES``...) are
made by the test's arena fixture.
"""

from __future__ import annotations

import os
from functools import cache

from hypothesis import strategies as st

from yurt.cli import COMMANDS
from yurt.cli.completion import SHELLS

CLOSED = "127.0.0.1:9"  # discard port: nothing listens there on a test machine, so connects fail at once

RECIPES = {
    "empty.def": b"",
    "nul.def": b"Bootstrap: scratch\n\x00%post\n\x00\n",
    "latin1.def": b"Bootstrap: scratch\n%labels\n  Caf\xe9 cr\xe8me\n",
    "pull.def": f"Bootstrap: docker\nFrom: {CLOSED}/fuzz/none:1\n".encode(),
    "localimage.def": b"Bootstrap: localimage\nFrom: garbage.bin\n",
    "broken.def": b"Bootstrap: \n%post\n%%%\n%files\n  /etc/passwd\n%environment\n\xff\xfe",
    "Dockerfile": f"FROM {CLOSED}/fuzz/none:1\nRUN false\n".encode(),
    "nul.Dockerfile": b"FROM \x00scratch\nCOPY \x00 /\n",
    "badarg.Dockerfile": b"ARG A=${\nFROM ${A:?nope}\n",
    "env.txt": b"A=1\nB\n=3\nC=\x00\nD=\xff\xfe\n" + b"E=" + b"x" * 70000 + b"\n",
    "config.toml": b"contain = maybe\n[[[\ncache_dir = 3\n",
    "auth.json": b'{"auths": {"127.0.0.1:9": {"auth": "!!!"}}, "x": [[[]]]}',
    "ca.pem": b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    "garbage.bin": bytes((i * 7919 + 13) % 256 for i in range(4096)),
    "empty": b"",
    "unicode-\u00e9\u4e2d\U0001f600.txt": "\u00e9\u4e2d\n".encode(),
}
USER_CONFIGS = {
    "none": None,
    "garbage": bytes(range(256)) * 4,
    "badtypes": b'contain = "yes please"\nsquashfs_threads = -3\ncache_dir = ["x"]\nlocal_cache_dir = ""\n',
    "toml": b"[section]\nkey = 1\n[[[broken\n",
    "nul": b"contain = true\x00\n",
    "good": b"contain = false\nsquashfs_threads = 1\n",
}


# --------------------------------------------------------------------------- vocabulary
# Strategies are built once and reused (cache): hypothesis validates each new strategy object on
# its first draw, which, redone per example, cost more than running the example.


def _pick(options) -> st.SearchStrategy:
    return _pick_cached(tuple(options))


@cache
def _pick_cached(options: tuple) -> st.SearchStrategy:
    return st.sampled_from(options)


@cache
def _ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    return st.integers(lo, hi)


def _shuffled(draw, items: list) -> list:
    """A permutation drawn with small integers (cheaper than st.permutations, and it shrinks to the identity)."""
    items = list(items)
    for i in range(len(items) - 1, 0, -1):
        j = i - draw(_ints(0, i))
        items[i], items[j] = items[j], items[i]
    return items


@cache
def _arg_text(max_size: int = 12) -> st.SearchStrategy[str]:
    """Anything an argv element can hold: unicode, undecodable bytes (surrogateescape), no NUL."""
    return st.one_of(
        st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=max_size),
        st.binary(min_size=1, max_size=8).filter(lambda b: b"\x00" not in b).map(os.fsdecode),
        _pick(["", " ", "-", "--", "=", ":", ",", "\n", "\t", "é中😀", "x" * 5000, "\u202e", "%s%n"]),
    )


@cache
def _nowhere() -> st.SearchStrategy[str]:
    """Free text as a path that names nothing (one relative component that does not exist)."""
    return _arg_text().map(lambda t: "zz-" + t.replace("/", "_"))


FILE_NAMES = [*RECIPES, "huge.img", "fifo", "dangling", "loop", "emptydir", "junkdir", "unreadable", "unreadable-dir",
              "trunc-header.sif", "trunc-half.sif", "corrupt-offset.sif", "corrupt-size.sif",
              "corrupt-partition.sif", "corrupt-fstype.sif"]
# Images that make a container start (or nearly): rare, since each costs a launch.
LAUNCHABLE = ["emptydir", "good.sif", "corrupt-partition.sif", "corrupt-fstype.sif"]


@cache
def paths(ro: str, writable: bool = True) -> st.SearchStrategy[str]:
    """A path: a fixture (absolute or relative), a place in out/, or nothing at all."""
    names = [n for n in FILE_NAMES if n not in LAUNCHABLE]
    fixed = [f"{ro}/{n}" for n in names] + [f"../ro/{n}" for n in names[:8]] + [
        "/nonexistent/x", "", ".", "/dev/null", "/dev/zero", "/etc/shadow", "/proc/self/status", f"{ro}/dangling/x",
        f"{ro}/garbage.bin/x", f"{ro}/unreadable-dir/x", f"{ro}/loop/x", "out/" * 40 + "x", "a" * 300]
    if writable:
        fixed += ["dir", "dir2", "new", "new.sif", "dir/new", "missing/new", "dir/"]
    return _weighted([(4, _pick(fixed)), (1, _nowhere())])


@cache
def images(ro: str) -> st.SearchStrategy[str]:
    return _images(ro)


@st.composite
def _images(draw, ro: str) -> str:
    """An image argument: mostly hostile files; 2 in 32 the tiny sandbox and 1 in 32 another launchable
    one (a launch costs 50-200 ms), 1 in 8 a reference that cannot be fetched."""
    roll = draw(_ints(0, 31))
    if roll in (1, 2):
        return f"{ro}/tiny"
    if roll == 0:
        return draw(_pick([f"{ro}/{n}" for n in LAUNCHABLE] + ["dir"]))
    if roll < 5:
        return draw(refs(ro))
    return draw(paths(ro, writable=False))


@cache
def refs(ro: str) -> st.SearchStrategy[str]:
    names = _pick(["fuzz/img", "fuzz/img:1", "a/b@sha256:" + "0" * 64, "UPPER/x", "x@sha256:zz", "",
                             "a//b", "a:b:c"])
    return st.one_of(
        st.builds(lambda scheme, name: f"{scheme}{CLOSED}/{name}", _pick(["docker://", "oras://"]), names),
        st.builds(lambda scheme, p: scheme + p, _pick(["oci:", "oci-archive:", "docker-archive:"]),
                  paths(ro, writable=False)),
        _pick(["docker://", "oras://", "library://x/y", "shub://x", "http://x", "instance://",
                         "instance://nope", "instance://../x", f"docker://{CLOSED}", "docker:///x", "oci:"]),
    )


@cache
def payload() -> st.SearchStrategy[list[str]]:
    """What follows the image: never an existing program; its arguments may be anything."""
    first = st.one_of(_pick(["yurt-fuzz-no-such-program", "/yurt-fuzz/none", "", " ", "./x"]),
                      _arg_text().map(lambda t: "yurt-fuzz-" + t.replace("/", "_")))
    return st.builds(lambda a, rest: [a, *rest], first, st.lists(_arg_text(), max_size=3))


@cache
def bind_specs(ro: str) -> st.SearchStrategy[tuple[str, str | None]]:
    """(spec, why it is invalid or None). Sources are fixtures or nothing, never a host directory."""
    part_src = _pick([f"{ro}/emptydir", f"{ro}/junkdir", f"{ro}/garbage.bin", f"{ro}/dangling", "dir",
                                "zz-none", f"{ro}/fifo", "/nonexistent"])
    part_dst = _pick(["/mnt", "/data", "relative", "/a/../..", "/proc", "/" + "d" * 300, "/x:y", "/é"])
    part_opt = _pick(["ro", "rw", "RO", "rbind", "nosuid", "ro,rw"])

    def one(src: str, dst: str | None, opt: str | None) -> str:
        return src + (f":{dst}" if dst is not None else "") + (f":{opt}" if opt is not None else "")

    good = st.builds(one, part_src, st.none() | part_dst, st.none()) | st.builds(one, part_src, part_dst, part_opt)
    return st.one_of(
        good.map(lambda s: (s, None)),
        st.lists(good, min_size=2, max_size=3).map(lambda xs: (",".join(xs), None)),
        _pick([":", ",,,", ",", ":/mnt", "a:b:c:d", ":::", " : ", "a,,b", "a,"]).map(
            lambda s: (s, "malformed bind")),
        _arg_text().map(lambda t: ("zz-" + t.replace(",", "_").replace(":", "_"), None)),
    )


# Values for a flag by name; each strategy gives (text, reason it is invalid or None).  An empty value
# leaves a string option unset, as in Apptainer (whose string options default to ""), so it is valid
# wherever "unset" is; a number is never empty.
def _ok(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[tuple[str, str | None]]:
    return strategy.map(lambda v: (v, None))


def _bad(*values: str) -> st.SearchStrategy[tuple[str, str | None]]:
    return _pick(values).map(lambda v: (v, "bad value"))


# What each number may be, written down here independently of the flag tables: a new int flag
# fails test_every_int_flag_has_a_range until someone decides its range.
INT_RANGES = {"writable-tmpfs-size": (1, 1 << 20), "pids-limit": (1, 1 << 22), "timeout": (0, 86400),
              "days": (0, 100000)}


@cache
def int_values(name: str) -> st.SearchStrategy[tuple[str, str | None]]:
    lo, hi = INT_RANGES[name]

    def judged(n: int) -> tuple[str, str | None]:
        return str(n), None if lo <= n <= hi else "number out of range"

    good = st.integers(min_value=lo, max_value=min(hi, lo + 100)).map(judged)
    edges = _pick([lo, hi, lo - 1, hi + 1, -1, 0, 1 << 64]).map(judged)
    wild = st.integers(min_value=-(1 << 70), max_value=1 << 70).map(judged)
    bad = _pick(["", "abc", "1.5", "0x10", "1e3", "\u0663", "5_000", "++1", "1 2", " ", "-", "+", " 7 "])
    return _weighted([(10, good), (3, edges), (1, wild), (2, bad.map(
        lambda v: (v, None if v.strip().isdigit() and v.isascii() and lo <= int(v) <= hi else "bad number")))])


def _weighted(choices: list[tuple[int, st.SearchStrategy]]) -> st.SearchStrategy:
    """One of the strategies, in proportion to the weights (the first is what shrinking tends to)."""
    table = tuple(strategy for weight, strategy in choices for _ in range(weight))
    return _ints(0, len(table) - 1).flatmap(lambda i: table[i])


@cache
def values_for(name: str, ro: str) -> st.SearchStrategy[tuple[str, str | None]]:
    any_path = _ok(paths(ro))
    special = {
        "bind": bind_specs(ro),
        "mounts": bind_specs(ro),
        "memory": _ok(_pick(["512M", "2G", "1", "64k", ""])) | _bad("-1G", "lots", "1Q", "0"),
        "cpus": _ok(_pick(["1", "0.5", "2", ""])) | _bad("-1", "nan", "inf", "x", "0"),
        "cpuset": _ok(_pick(["0", "0-1", "0,1", ""])) | _bad("a-b", "3-1", "-1", "0-99999999999"),
        "signal": _ok(_pick(["TERM", "SIGINT", "9", "kill", ""])) | _bad("NOPE", "0", "65", "-9", "9999"),
        "type": _ok(_pick(["all", "blob", "sif,ref", "build"])) | _bad("nope", ",", "sif,nope"),
        "to": _ok(_pick(["def", "dockerfile"])) | _bad("", "yaml", "DEF"),
        "mpi": _ok(_pick(["hybrid", "host", "none"])) | _bad("mpich", "HOST"),
        "platform": _ok(_pick(["linux/amd64", "linux/arm64/v8", ""])) | _bad("windows/amd64", "linux", "linux//"),
        "compression": _ok(_pick(["gzip", "zstd", "lz4", "xz", ""])) | _bad("nope", "bzip9"),
        "layer-compression": _ok(_pick(["gzip", "zstd", ""])) | _bad("nope"),
        "env": _ok(_pick(["A=1", "A=", "PATH=/x", "A=b=c", "LD_PRELOAD=x"])) | _bad("=1", "", "A", "\u00e9=1"),
        "build-arg": _ok(_pick(["A=1", "A="])) | _bad("=1", "", "A"),
        "hostname": _ok(_pick(["box", "a-b.c", ""])) | _bad("a b", "x" * 100, "-x"),
        "app": _ok(_pick(["app1", "a.b", ""])) | _bad("a/b", "../x", "a b"),
        "yurt": _ok(_pick(["yurt-fuzz-none", "/nonexistent/yurt -m x", "a 'b", "'", "\"unbalanced"])),
        "image": _ok(images(ro)),
        "username": _ok(_arg_text()),
    }
    return st.one_of(special.get(name, any_path), _ok(_arg_text()), any_path)


# --------------------------------------------------------------------------- argument vectors


class Target:
    """One subcommand: the words that name it, its flags, how many positionals it takes."""

    def __init__(self, words: list[str], flags: list, stop_at_positional: bool = False,
                 positionals: tuple[int, int | None] = (0, None)) -> None:
        self.words = words
        self.flags = flags
        self.stop = stop_at_positional
        self.npos = positionals


def _targets() -> dict[str, Target]:
    from yurt.cli import (
        actions,
        build,
        cache,
        completion,
        config,
        convert,
        inspect,
        instance,
        misc,
        pull,
        push,
        registry,
    )

    start_flags = instance.start_flags()
    t = {name: Target([name], actions.FLAGS, True, (1, None)) for name in ("exec", "run", "shell", "test")}
    t.update({
        "instance start": Target(["instance", "start"], start_flags, True, (2, None)),
        "instance list": Target(["instance", "list"], instance.LIST_FLAGS),
        "instance stop": Target(["instance", "stop"], instance.STOP_FLAGS),
        "srun": Target(["srun"], actions.FLAGS),
        "build": Target(["build"], build.FLAGS, positionals=(2, 2)),
        "pull": Target(["pull"], pull.FLAGS, positionals=(1, 2)),
        "push": Target(["push"], push.FLAGS, positionals=(2, 2)),
        "registry login": Target(["registry", "login"], registry.FLAGS, positionals=(1, 1)),
        "registry logout": Target(["registry", "logout"], registry.FLAGS, positionals=(1, 1)),
        "registry list": Target(["registry", "list"], registry.FLAGS, positionals=(0, 0)),
        "cache list": Target(["cache", "list"], cache.LIST_FLAGS, positionals=(0, 0)),
        "cache clean": Target(["cache", "clean"], cache.CLEAN_FLAGS, positionals=(0, 0)),
        "config show": Target(["config", "show"], config.FLAGS, positionals=(0, 0)),
        "completion": Target(["completion"], completion.FLAGS, positionals=(1, 1)),
        "convert": Target(["convert"], convert.FLAGS, positionals=(1, 1)),
        "inspect": Target(["inspect"], inspect.FLAGS, positionals=(1, 1)),
        "run-help": Target(["run-help"], inspect.FLAGS, positionals=(1, 1)),
        "version": Target(["version"], misc.FLAGS, positionals=(0, 0)),
        "help": Target(["help"], misc.FLAGS, positionals=(0, 2)),
        "global": Target([], []),  # the top level: global options, the command word
    })
    covered = {w for t_ in t.values() for w in t_.words[:1]}
    assert covered >= set(COMMANDS), f"commands without a fuzz target: {set(COMMANDS) - covered}"
    return t


TARGETS = _targets()


class Vector:
    """A generated command line, its environment, and why it is invalid (None: it may be valid)."""

    def __init__(self, argv: list[str], env: dict[str, str], invalid: str | None, helped: bool,
                 late_invalid: str | None) -> None:
        self.argv, self.env = argv, env
        self.invalid = invalid  # fails while parsing: --help cannot save it
        self.late_invalid = late_invalid  # fails after parsing: --help wins
        self.helped = helped

    def __repr__(self) -> str:
        return f"Vector(argv={self.argv!r}, env={self.env!r}, invalid={self.invalid!r}, late={self.late_invalid!r})"


def _option(draw, flag, ro: str) -> tuple[list[str], str | None, str | None]:
    """One use of ``flag``: (tokens, parse-time error, later error); for --help the later error is "help"."""
    spellings = [f"--{flag.name}", *(f"--{a}" for a in flag.aliases)] + ([f"-{flag.short}"] if flag.short else [])
    spelled = draw(_pick(spellings))
    if flag.kind == "bool":
        roll = draw(_ints(0, 15))  # 0-11 bare, 12-14 --flag=BOOL, 15 --flag=garbage
        form = "bare" if roll < 12 else "eq-good" if roll < 15 else "eq-bad"
        if form == "bare" or not spelled.startswith("--"):
            return [spelled], None, "help" if flag.name == "help" else None
        if form == "eq-good":
            value = draw(_pick(["true", "false", "1", "0", "yes", "OFF", ""]))
            helped = flag.name == "help" and value in ("true", "1", "yes")
            return [f"{spelled}={value}"], None, "help" if helped else None
        return [f"{spelled}={draw(_pick(['maybe', '2', 'tru', ' x']))}"], "bad boolean", None
    if flag.kind == "int":
        value, bad = draw(int_values(flag.name))
        early, late = bad, None
    else:
        value, bad = draw(values_for(flag.name, ro))
        early, late = None, bad
    form = draw(_pick(["sep", "sep", "eq", "glued"]))
    if form == "eq" and spelled.startswith("--"):
        return [f"{spelled}={value}"], early, late
    if form == "glued" and not spelled.startswith("--") and value:
        return [spelled + value], early, late
    return [spelled, value], early, late


def _unknown_option(draw, flags: list) -> list[str]:
    return [draw(_unknown_strategy(tuple(flags)))]


@cache
def _unknown_strategy(flags: tuple) -> st.SearchStrategy[str]:
    """Options the command does not have: abbreviations of its long ones, free letters, made-up names."""
    names = {f.name for f in flags} | {a for f in flags for a in f.aliases}
    shorts = {f.short for f in flags if f.short}
    prefixes = sorted({n[:k] for n in names for k in range(1, len(n)) if n[:k] not in names})
    free = sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") - shorts)
    return st.one_of(
        _pick(prefixes or ["zz"]).map(lambda p: f"--{p}"),
        _pick(free).map(lambda c: f"-{c}"),
        _arg_text().map(lambda t: "--yurt-fuzz-" + t.replace("=", "_")),
        _pick(["--=x", "---", "--Bind", "--BIND", "-\u00e9"]),
    )


BOOLS = st.booleans()
COMMAND_WORDS = st.one_of(_pick(list(COMMANDS)), _arg_text())
GLOBALS = st.lists(_pick(["-q", "--quiet", "-s", "--silent", "-d", "--debug", "-h", "--version", "--yurt-fuzz-global",
                          "-x"]), max_size=2)


@cache
def _texts() -> st.SearchStrategy[list[str]]:
    return st.lists(_arg_text(), max_size=3)


SUBCOMMANDS = {"instance": ("start", "list", "stop"), "cache": ("list", "clean"), "config": ("show",),
               "registry": ("login", "logout", "list")}


@st.composite
def vectors(draw, target: Target, ro: str, conf: str) -> Vector:
    invalid: str | None = None
    late: str | None = None
    helped = False
    argv: list[str] = []
    # global options first, now and then
    for g in draw(GLOBALS) if draw(_ints(0, 7)) == 0 else []:
        argv.append(g)
        if invalid is None and not helped:
            if g in ("--yurt-fuzz-global", "-x"):
                invalid = "unknown global option"
            elif g in ("-h", "--version"):
                helped = True
    if helped:  # `yurt -h ...` and `yurt --version ...` ignore the rest
        return Vector(argv + target.words + draw(_texts()),
                      draw(environments(target, ro, conf)), None, True, None)
    if not target.words:  # the top level: a command word, real or not
        word = draw(COMMAND_WORDS)
        argv.append(word)
        if word not in COMMANDS and not helped and invalid is None:
            invalid = "unknown command"
        argv += draw(_texts())
        return Vector(argv, draw(environments(target, ro, conf)), invalid, helped, None)
    argv += target.words
    if target.words == ["srun"]:
        return _srun(draw, argv, ro, conf, helped, invalid)
    options: list[list[str]] = []
    value_uses: dict[int, tuple[str, str | None]] = {}  # id(tokens) -> (dest, why invalid) of value options
    usable = [f for f in target.flags if f.name != "help"]  # --help: rarely, below; it ends the parse's use
    for _ in range(draw(_ints(0, 5))):
        roll = draw(_ints(0, 31))  # 0-28 one of the command's options, 29-30 an unknown one, 31 --help
        kind = "flag" if roll < 29 and usable else "unknown" if roll < 31 else "help"
        if kind == "flag":
            flag = draw(_pick(usable))
            tokens, early, bad = _option(draw, flag, ro)
            if bad == "help":
                helped, bad = True, None
            invalid = invalid or early
            if flag.kind == "value":  # the last one counts, as in every option parser: judged below
                value_uses[id(tokens)] = (flag.dest, bad)
            else:
                late = late or bad
        elif kind == "unknown":
            tokens = _unknown_option(draw, target.flags)
            invalid = invalid or "unknown option"
        else:
            tokens = [draw(_pick(["--help", "-h"]))]
            helped = True
        options.append(tokens)
    positionals = _positionals(draw, target, ro)
    lo, hi = target.npos
    if len(positionals) < lo or (hi is not None and len(positionals) > hi):
        late = late or "wrong number of arguments"
    if target.words == ["help"] and positionals:
        if positionals[0] not in COMMANDS or (len(positionals) == 2 and positionals[1] not in SUBCOMMANDS.get(
                positionals[0], ())):
            late = late or "help for an unknown command"
    if target.words == ["completion"] and positionals and positionals[0] not in SHELLS:
        late = late or "completion for an unknown shell"
    order = options + [[p] for p in positionals]
    if not target.stop:
        order = _shuffled(draw, order)
    last_value = {}
    for tokens in order:
        if id(tokens) in value_uses:
            dest, bad = value_uses[id(tokens)]
            last_value[dest] = bad
    late = late or next((bad for bad in last_value.values() if bad), None)
    body = [t for tokens in order for t in tokens]
    valued = [f for f in target.flags if f.kind != "bool"]
    if valued and (not target.stop or not positionals) and draw(_ints(0, 19)) == 0:
        body.append(f"--{draw(_pick(valued)).name}")  # a value-taking option without its value
        invalid = invalid or "missing value"
    argv += body
    return Vector(argv, draw(environments(target, ro, conf)), invalid, helped, late)


def _positionals(draw, target: Target, ro: str) -> list[str]:
    words = target.words
    if target.stop:  # IMAGE, then (instance start) NAME, then the payload
        out = [] if draw(_ints(0, 15)) == 0 else [draw(images(ro))]
        if words[0] == "instance" and out:
            out.append(draw(_pick(["fuzz1", "", "a/b", "..", "x" * 300, "-n", "\u00e9"]) | _arg_text()))
        if out and out[0].endswith("/tiny"):  # payloads that succeed, and nothing a shell would run
            if words[0] == "exec":
                out += ["/bin/true", *draw(_texts())] if draw(_ints(0, 7)) else draw(payload())
            elif words[0] in ("run", "test", "instance") and draw(BOOLS):
                out += draw(_texts())
        elif out and draw(BOOLS):
            out += draw(payload())
        return out
    return draw(_positional_lists(words[0], ro, draw(_ints(0, 3))))


@cache
def _positional_lists(word: str, ro: str, n: int) -> st.SearchStrategy[list[str]]:
    vocab = {
        "build": paths(ro), "pull": st.one_of(refs(ro), paths(ro)), "push": st.one_of(refs(ro), paths(ro)),
        "convert": paths(ro), "inspect": images(ro), "run-help": images(ro),
        "help": _pick([*COMMANDS, "start", "list", "clean", "show", "login", "nope", ""]),
        "registry": _pick([CLOSED, f"https://{CLOSED}/", "", "localhost:1", "bad host", "a" * 300]),
        "completion": _pick([*SHELLS, "tcsh", "BASH", ""]) | _arg_text(),
    }.get(word, _arg_text())
    return st.lists(vocab, max_size=n, min_size=n).map(lambda out: [p if not p.startswith("-") or len(p) == 1
                                                                    else "zz" + p for p in out])


def _srun(draw, argv: list[str], ro: str, conf: str, helped: bool, invalid: str | None) -> Vector:
    from yurt.cli.actions import FLAGS

    late = None
    parts: list[str] = []
    has_image = False
    for _ in range(draw(_ints(0, 4))):
        kind = draw(_pick(["image", "mounts", "prestage", "exec-flag", "srun-opt", "yurt", "no-sharens"]))
        if kind == "image":
            parts += [f"--image={draw(images(ro))}"]
            has_image = True
        elif kind in ("mounts", "yurt"):
            value, bad = draw(values_for(kind, ro))
            parts += [f"--{kind}", value]
            late = late or bad
        elif kind == "exec-flag":
            flag = draw(_pick([f for f in FLAGS if f.name not in ("help", "mpi")]))
            tokens, early, bad = _option(draw, flag, ro)
            if tokens[0].startswith("--"):
                parts += tokens
                late = late or early or bad
        elif kind == "srun-opt":
            parts += list(draw(_pick([("-n", "2"), ("-N1",), ("--mpi=pmix",), ("--ntasks-per-node=1",), ("-x",)])))
        else:
            parts.append(f"--{kind}")
    if draw(BOOLS):
        parts.append("--")
        parts += draw(payload()) if draw(_ints(0, 5)) else []
    if not parts:
        late = late or "no arguments"
    elif "--" not in parts or not has_image or parts[-1] == "--":
        late = late or "incomplete"
    if draw(_ints(0, 20)) == 0:
        parts.insert(0, "--help")
        helped = True
    argv += parts
    return Vector(argv, draw(environments(TARGETS["srun"], ro, conf)), invalid, helped,
                  None if helped and parts[0] == "--help" else late)


@cache
def environments(target: Target, ro: str, conf: str) -> st.SearchStrategy[dict[str, str]]:
    """A few variables: the command's YURT_<FLAG>s with generated values, and yurt's other settings."""
    names = [n for f in target.flags for n in f.env_names()] or ["YURT_BIND"]
    dirs = _pick([f"{ro}/garbage.bin", f"{ro}/dangling", f"{ro}/unreadable-dir", f"{ro}/emptydir", "",
                            "relative", "/nonexistent/x", f"{ro}/fifo", "dir"])
    general = st.one_of(
        st.tuples(_pick(names), st.one_of(_arg_text(), paths(ro), _pick(
            ["-1", "0", "true", "maybe", ":", ",,,", "99999999999999999999"]))),
        st.tuples(_pick(["YURT_CACHEDIR", "YURT_LOCAL_CACHEDIR", "YURT_RUNTIMEDIR", "YURT_TMPDIR",
                                   "YURT_SESSIONDIR", "HOME", "TMPDIR", "XDG_RUNTIME_DIR"]), dirs),
        st.tuples(st.just("XDG_CONFIG_HOME"), _pick([f"{conf}/{n}" for n in USER_CONFIGS] + ["", "rel"])),
        st.tuples(st.just("YURT_SITE_CONFIG"), _pick([f"{conf}/site.toml", f"{conf}/badsite.toml",
                                                               f"{ro}/garbage.bin", f"{ro}/fifo", ""])),
        st.tuples(_pick(["YURT_DEBUG", "YURT_QUIET", "YURT_CONTAIN", "YURT_SQUASHFS_THREADS",
                                   "YURT_MAX_IMAGE_BYTES", "SOURCE_DATE_EPOCH", "SLURM_JOB_ID", "YURT_INSECURE",
                                   "YURT_ARCH", "YURT_INSECURE_REGISTRIES", "YURT_DOCKER_USERNAME",
                                   "YURT_DOCKER_PASSWORD", "YURT_MPI_LIBRARY", "YURT_CDI_DIRS", "REGISTRY_AUTH_FILE",
                                   "YURT_BUSYBOX", "USER"]),
                  st.one_of(_pick(["1", "0", "-5", "yes", "", "1e9", "99999999999999999999", "abc"]),
                            paths(ro))),
    )
    return st.lists(general, max_size=3).map(dict)
