"""The site policy against a hostile user on the node (issue 10, part 2).

Run as root (``pytest -m root``): a real ``/etc/yurt/yurt.toml`` is installed for one test and removed
(or what was there restored) afterwards, and the attacks are made by unprivileged users.  The site
allows only root-owned images under ``<shared>/images``; every image holds ``/marker``, ``good`` for the
allowed ones and ``bad`` for the one elsewhere.  Each attack is first made with the policy file absent,
where it must work (so each test is shown able to fail), then with it, where ``bad`` must never be
printed:

* a fake ``squashfuse_ll``/``squashfuse``/``unsquashfs`` first on ``PATH`` that serves the bad image;
* an edit of the node-local unpacked copy of an allowed image (``--unsquash``);
* a symbolic link swapped between an allowed and a disallowed image while yurt runs it (200 runs per
  image kind);
* ``/tmp/yurt-<uid>`` and ``/var/tmp/yurt-<uid>`` planted by another user (a link to their directory, a
  directory of theirs holding a FIFO as lock file, a FIFO): yurt goes on in a private directory with one
  notice, touches nothing of theirs, and never hangs.

Two unprivileged users: ``yurttest`` (``$YURT_TEST_USER``) and ``yurtother`` (``$YURT_OTHER_USER``, made
here with ``useradd`` when missing, as ``make test-user`` does).  For the planted directories the victim
is ``yurtother`` and the attacker ``yurttest``: the test then never has to move ``yurttest``'s own
``/tmp/yurt-1001`` aside, which other test runs on the machine may be using.
"""

from __future__ import annotations

import copy
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root]

SITE = Path("/etc/yurt/yurt.toml")
OTHER_USER = os.environ.get("YURT_OTHER_USER", "yurtother")
SWAPS = 200  # runs of yurt per image kind while the link is being swapped


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def other_user(test_user):
    """The second unprivileged user, created when missing; same interface as ``test_user``."""
    try:
        pw = pwd.getpwnam(OTHER_USER)
    except KeyError:
        subprocess.run(["useradd", "-m", "-U", "-s", "/bin/bash", OTHER_USER], check=True, capture_output=True)
        pw = pwd.getpwnam(OTHER_USER)
    other = copy.copy(test_user)
    other.pw, other.name = pw, pw.pw_name
    return other


def _pythonpath(user) -> dict[str, str]:
    """How ``test_user`` makes ``python -m yurt`` import the yurt under test (nothing when it is installed)."""
    repo = getattr(user, "repo", None)
    return {"PYTHONPATH": str(repo)} if repo else {}


@pytest.fixture(scope="module")
def world(tmp_path_factory, busybox_rootfs):
    """``<shared>/images/{good,good.sif}`` (allowed), ``<shared>/elsewhere/{bad,bad.sif,bad.sqfs}`` (not),
    all root's, and ``<shared>/user``, a directory of the test user's."""
    shared = Path(tempfile.mkdtemp(prefix="yurt-policy-attacks-", dir="/var/tmp"))
    os.chmod(shared, 0o755)
    try:
        for where, name, marker in (("images", "good", "good"), ("elsewhere", "bad", "bad")):
            tree = shared / where / name
            shutil.copytree(busybox_rootfs, tree, symlinks=True)
            (tree / "marker").write_text(f"{marker}\n")
            os.chmod(tree, 0o755)
            for path in (shared / where, tree):
                os.chmod(path, 0o755)
            r = subprocess.run([sys.executable, "-m", "yurt", "build", str(tree) + ".sif", str(tree)],
                               capture_output=True, text=True, timeout=300, cwd="/")
            assert r.returncode == 0, r.stderr
            os.chmod(str(tree) + ".sif", 0o644)
        subprocess.run(["mksquashfs", str(shared / "elsewhere" / "bad"), str(shared / "elsewhere" / "bad.sqfs"),
                        "-quiet", "-no-progress", "-noappend"], check=True, capture_output=True)
        os.chmod(shared / "elsewhere" / "bad.sqfs", 0o644)
        yield shared
    finally:
        shutil.rmtree(shared, ignore_errors=True)


@pytest.fixture
def user_dir(world, test_user):
    """A fresh directory owned by the test user (removed afterwards)."""
    path = Path(tempfile.mkdtemp(prefix="user-", dir=world))
    os.chown(path, test_user.pw.pw_uid, test_user.pw.pw_gid)
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def policy(world: Path) -> str:
    return f'allowed_image_paths = ["{world}/images"]\nallowed_image_owners = ["root"]\n'


def as_user(user, script: str, *, env: dict[str, str] | None = None, timeout: float = 600):
    """``sh -c script`` as ``user`` with yurt importable (``yurt`` is ``python -m yurt``)."""
    yurt = f"{sys.executable} -m yurt"
    extra = [f"{k}={v}" for k, v in (env or {}).items()]
    path = [f"{k}={v}" for k, v in _pythonpath(user).items()]
    argv = ["runuser", "-u", user.name, "--", "env", *path, f"HOME={user.pw.pw_dir}", f"YURT={yurt}", *extra,
            "sh", "-c", script]
    return subprocess.run(argv, capture_output=True, text=True, cwd="/", timeout=timeout)


def markers(r) -> str:
    assert r.returncode == 0, f"rc={r.returncode}\nstdout={r.stdout}\nstderr={r.stderr}"
    return r.stdout.strip()


def chown_tree(path: Path, user) -> None:
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            os.lchown(name, user.pw.pw_uid, user.pw.pw_gid)


# --------------------------------------------------------------------------- PATH-planted helpers


FAKE_SQUASHFUSE = """#!/bin/sh
# A helper planted first on PATH: serves {bad} whatever yurt asked for (args: -f -o offset=N IMAGE MOUNTPOINT).
for last; do :; done
exec /usr/bin/squashfuse_ll -f {bad} "$last"
"""
FAKE_UNSQUASHFS = """#!/bin/sh
# A planted unsquashfs: extracts {bad} wherever yurt asked (args: ... -d DEST ... IMAGE).
dest=
while [ $# -gt 1 ]; do [ "$1" = -d ] && dest=$2; shift; done
exec /usr/bin/unsquashfs -no-progress -f -d "$dest" {bad}
"""


def test_path_planted_helpers_cannot_serve_another_image(site_file, world, user_dir, test_user):
    fake = user_dir / "bin"
    fake.mkdir()
    bad = world / "elsewhere" / "bad.sqfs"
    for name, text in (("squashfuse_ll", FAKE_SQUASHFUSE), ("squashfuse", FAKE_SQUASHFUSE),
                       ("unsquashfs", FAKE_UNSQUASHFS)):
        (fake / name).write_text(text.format(bad=bad))
        (fake / name).chmod(0o755)
    chown_tree(user_dir, test_user)
    good = world / "images" / "good.sif"
    script = ('$YURT exec "$1" cat /marker; '
              'YURT_LOCAL_CACHEDIR="$2" $YURT exec --unsquash "$1" cat /marker')
    env = {"PATH": f"{fake}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

    # Without a site policy yurt takes the user's PATH: the planted helpers decide what runs.
    r = as_user(test_user, f"set -- {good} {user_dir}/cache1; " + script, env=env)
    assert markers(r).split() == ["bad", "bad"], r.stderr

    site_file.install(policy(world))
    r = as_user(test_user, f"set -- {good} {user_dir}/cache2; " + script, env=env)
    assert markers(r).split() == ["good", "good"], r.stderr


# --------------------------------------------------------------------------- the unpacked copy


def test_edited_unpacked_copy_is_not_trusted_under_policy(site_file, world, user_dir, test_user):
    good = world / "images" / "good.sif"
    cache = user_dir / "cache"
    run = f'YURT_LOCAL_CACHEDIR={cache} $YURT exec --unsquash {good} cat /marker'
    edit = (f'for t in {cache}/unpacked/*/; do chmod u+w "$t" "$t/marker" 2>/dev/null; '
            f'echo bad > "$t/marker"; done')

    # Without a policy the shared copy is reused: editing it changes what runs.
    assert markers(as_user(test_user, run)) == "good"
    assert markers(as_user(test_user, edit + "; " + run)) == "bad"

    # Under the policy the (still edited) shared copy is not used, nor written: a private unpack each run.
    site_file.install(policy(world))
    before = sorted(p.name for p in (cache / "unpacked").iterdir())
    r = as_user(test_user, run)
    assert markers(r) == "good"
    assert "for this run only" in r.stderr and r.stderr.count("yurt: notice:") == 1, r.stderr
    assert sorted(p.name for p in (cache / "unpacked").iterdir()) == before
    # ... and nothing of it is left behind anywhere the user can see
    assert markers(as_user(test_user, edit + "; " + run)) == "good"


# --------------------------------------------------------------------------- symlink swaps


SWAPPER = """
import os, sys, time
link, a, b = sys.argv[1:4]
tmp = link + ".new"
i = 0
while True:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    os.symlink(a if i % 2 else b, tmp)
    os.replace(tmp, link)
    i += 1
    time.sleep(0.0005)
"""


def _swap_runs(user, link: Path, good: Path, bad: Path, runs: int, site_absent: bool) -> list[str]:
    """Run ``yurt exec LINK cat /marker`` ``runs`` times while another process of the user swaps the link
    between ``good`` and ``bad``; one word per run: good, bad, refused or the error.  Without the site file
    (``site_absent``) the runs stop at the first bad one."""
    swapper = subprocess.Popen(["runuser", "-u", user.name, "--", sys.executable, "-c", SWAPPER,
                                str(link), str(good), str(bad)], start_new_session=True)
    try:
        stop = 'case "$out" in *bad*) break;; esac;' if site_absent else ""
        # each run notes whether the site file was there just before and just after it (another root test
        # removing it meanwhile would make the run meaningless, not a pass)
        script = (f'i=0; while [ $i -lt {runs} ]; do i=$((i+1)); s=A; test -e {SITE} && s=P; '
                  f'out=$($YURT exec {link} cat /marker 2>&1); test -e {SITE} || s=A; '
                  f'echo "RUN$s $out" | tr "\\n" " "; echo; {stop} done')
        r = as_user(user, script, timeout=1200)
    finally:
        os.killpg(swapper.pid, signal.SIGKILL)  # runuser and the swapper under it
        swapper.wait()
    results = []
    for line in r.stdout.splitlines():
        assert line.startswith(("RUNP ", "RUNA ")), r.stdout
        out = line[len("RUNP "):].strip()
        if line.startswith("RUNP" if site_absent else "RUNA"):
            results.append("site file " + ("present" if site_absent else "absent") + f": {out}")
        elif out == "good":
            results.append("good")
        elif out == "bad":
            results.append("bad")
        elif "not in a location the site allows" in out:
            results.append("refused")
        else:
            results.append(out)
    return results


@pytest.mark.parametrize("kind", ["sif", "dir"])
def test_symlink_swap_never_runs_the_disallowed_image(site_file, world, user_dir, test_user, kind):
    good = world / "images" / ("good.sif" if kind == "sif" else "good")
    bad = world / "elsewhere" / ("bad.sif" if kind == "sif" else "bad")
    link = user_dir / "img"
    link.symlink_to(good)
    os.lchown(link, test_user.pw.pw_uid, test_user.pw.pw_gid)

    # Without the policy both images may run, and the swap reaches yurt: the bad one does run.
    control = _swap_runs(test_user, link, good, bad, SWAPS, site_absent=True)
    assert "bad" in control, control

    site_file.install(policy(world))
    results = _swap_runs(test_user, link, good, bad, SWAPS, site_absent=False)
    assert len(results) == SWAPS
    assert "bad" not in results, results
    assert set(results) <= {"good", "refused"}, [r for r in results if r not in ("good", "refused")]
    assert results.count("good") > 0 and results.count("refused") > 0, results  # the swapping was real


# --------------------------------------------------------------------------- planted per-user directories


def _clear(uid: int) -> None:
    for parent in ("/tmp", "/var/tmp"):
        for name in os.listdir(parent):
            if name == f"yurt-{uid}" or name.startswith(f"yurt-{uid}-"):
                path = os.path.join(parent, name)
                if os.path.isdir(path) and not os.path.islink(path):
                    subprocess.run(["rm", "-rf", "--one-file-system", path], check=False)
                else:
                    os.unlink(path)


def _snapshot(path: Path) -> list[tuple[str, int, int]]:
    out = []
    for root, dirs, files in os.walk(path):
        for name in sorted(dirs + files):
            st = os.lstat(os.path.join(root, name))
            out.append((os.path.relpath(os.path.join(root, name), path), st.st_mode, st.st_size))
    return sorted(out)


@pytest.mark.parametrize("plant", ["symlink", "their-dir", "fifo"])
def test_planted_per_user_directories_neither_redirect_nor_block(site_file, world, user_dir, test_user,
                                                                 other_user, plant):
    victim, attacker = other_user, test_user
    uid = victim.pw.pw_uid
    good = world / "images" / "good.sif"
    _clear(uid)
    theirs = user_dir / "theirs"  # the attacker's
    (theirs / "locks").mkdir(parents=True)
    (theirs / "sharens").mkdir()
    chown_tree(user_dir, attacker)
    os.chmod(theirs, 0o777)
    planted = [Path(f"/tmp/yurt-{uid}"), Path(f"/var/tmp/yurt-{uid}")]
    script = {
        "symlink": f'ln -s {theirs} /tmp/yurt-{uid} && ln -s {theirs} /var/tmp/yurt-{uid}',
        "their-dir": (f'for d in /tmp/yurt-{uid} /var/tmp/yurt-{uid}; do mkdir -m 777 $d && mkdir -m 777 $d/locks '
                      f'$d/sharens $d/unpacked && for k in a b; do mkfifo -m 666 $d/locks/$k.lock; done; done'),
        "fifo": f'mkfifo -m 666 /tmp/yurt-{uid} /var/tmp/yurt-{uid}',
    }[plant]
    try:
        r = as_user(attacker, script)
        assert r.returncode == 0, r.stderr
        before = {p: _snapshot(p) if p.is_dir() and not p.is_symlink() else None for p in planted}
        theirs_before = _snapshot(theirs)
        env = {"XDG_RUNTIME_DIR": ""}  # state_dir's default: /tmp/yurt-<uid>
        for attempt in ("no policy", "policy"):
            if attempt == "policy":
                site_file.install(policy(world))
            r = as_user(victim, f"$YURT exec --unsquash {good} cat /marker && "
                                f"$YURT exec --sharens --sharens-tag t {good} cat /marker", env=env, timeout=120)
            assert markers(r).split() == ["good", "good"], (attempt, r.stderr)
            planted_notices = [ln for ln in r.stderr.splitlines() if "is not a private directory of yours" in ln]
            # one notice per planted place a process uses: /var/tmp/yurt-<uid> for the shared unpacked copy
            # (not used under the policy: a private unpack), /tmp/yurt-<uid> for the --sharens state
            assert len(planted_notices) == (2 if attempt == "no policy" else 1), (attempt, r.stderr)
            assert all(ln.startswith("yurt: notice: ") for ln in planted_notices)
        # nothing of theirs was used or changed, and the fallbacks are the victim's own
        assert _snapshot(theirs) == theirs_before
        for p in planted:
            assert (_snapshot(p) if p.is_dir() and not p.is_symlink() else None) == before[p]
            assert {"symlink": p.is_symlink(), "their-dir": p.is_dir(), "fifo": p.is_fifo()}[plant]
            assert os.lstat(p).st_uid == attacker.pw.pw_uid
        fallbacks = [Path(parent) / n for parent in ("/tmp", "/var/tmp") for n in os.listdir(parent)
                     if n.startswith(f"yurt-{uid}-")]
        assert {p.parent for p in fallbacks} == {Path("/tmp"), Path("/var/tmp")}, fallbacks
        for p in fallbacks:
            st = os.lstat(p)
            assert st.st_uid == uid and (st.st_mode & 0o777) == 0o700 and not p.is_symlink()
    finally:
        _clear(uid)
