"""``yurt build`` of a Debian recipe that installs a package with apt-get, for real.

The base is the debootstrapped bookworm tree of ``test_debian.py`` (cached under
``/var/tmp/yurt-ci/debian-bookworm``), copied with ``cp -a`` and handed to the
unprivileged test user, who builds::

    Bootstrap: localimage
    From: <the copy>
    %post
        apt-get update && apt-get install -y --no-install-recommends hello

in both rootless modes: single-id fakeroot (``YURT_BUILD_IGNORE_SUBUID=1``: chown faked by
seccomp, apt's sandbox user off, the image packed all-root) and the subuid range
(``newuidmap``: real ownership, e.g. apt's ``_apt`` directories).  Root builds it too.
The result must run ``hello`` and hold ``/usr/bin/hello`` owned by 0/0.  apt needs the
Debian mirror (``$YURT_TEST_DEBIAN_MIRROR``, else the one in the machine's apt sources), so
this is an e2e test; it runs in the root pass, acting as the test user where it matters.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.root]

RECIPE = """\
Bootstrap: localimage
From: {base}

%post
    apt-get update && apt-get install -y --no-install-recommends hello
    rm -rf /var/lib/apt/lists/*

%runscript
    exec hello "$@"

%test
    hello | grep -q "Hello, world!"
"""


@pytest.fixture
def workdir() -> Path:
    """A directory under /var/tmp (where the test user can reach it), removed afterwards."""
    shared = Path(tempfile.mkdtemp(prefix="yurt-build-debian-", dir="/var/tmp"))
    shared.chmod(0o755)
    yield shared
    shutil.rmtree(shared, ignore_errors=True)


@pytest.fixture
def user_workdir(workdir, test_user) -> Path:
    os.chown(workdir, test_user.pw.pw_uid, test_user.pw.pw_gid)
    return workdir


def _user_copy(debian_rootfs: Path, dest: Path, owner) -> Path:
    # cp -a, not shutil.copytree: the tree has device nodes in dev/
    subprocess.run(["cp", "-a", str(debian_rootfs), str(dest)], check=True)
    if owner is not None:
        subprocess.run(["chown", "-R", f"{owner.pw_uid}:{owner.pw_gid}", str(dest)], check=True)
    return dest


def _listing(sif: Path) -> dict[str, str]:
    """``{path: "uid/gid"}`` from ``unsquashfs -lln`` of the SIF's partition."""
    from yurt.image.sif import SifFile

    with SifFile.open(sif) as f:
        offset = f.primary_partition().offset
    out = subprocess.run(["unsquashfs", "-o", str(offset), "-lln", "-d", "", str(sif)], capture_output=True,
                         text=True, check=True).stdout
    owners = {}
    for line in out.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6:
            owners[parts[5].split(" -> ")[0]] = parts[1]
    return owners


def _has_subuid(name: str) -> bool:
    def listed(path: str) -> bool:
        try:
            with open(path) as f:
                return any(line.split(":")[0] == name for line in f)
        except OSError:
            return False

    return listed("/etc/subuid") and listed("/etc/subgid") and shutil.which("newuidmap") is not None


@pytest.mark.parametrize("mode", ["single", "subuid"])
def test_rootless_build_installs_a_package_with_apt(debian_rootfs, test_user, user_workdir, mode):
    workdir = user_workdir
    if mode == "subuid" and not _has_subuid(test_user.name):
        pytest.skip(f"{test_user.name} has no /etc/subuid range")
    base = _user_copy(debian_rootfs, workdir / "base", test_user.pw)
    recipe = workdir / "hello.def"
    recipe.write_text(RECIPE.format(base=base))
    recipe.chmod(0o644)
    out = workdir / "hello.sif"
    env = {"YURT_BUILD_IGNORE_SUBUID": "1"} if mode == "single" else {}
    t0 = time.monotonic()
    r = test_user.yurt("build", out, recipe, env=env, timeout=900)
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    print(f"{mode} build of the Debian recipe: {elapsed:.1f} s")
    expected = "single-id fakeroot" if mode == "single" else "fakeroot with a subuid range"
    assert expected in r.stderr
    assert "Setting up hello" in r.stdout
    assert out.stat().st_uid == test_user.pw.pw_uid
    assert [p.name for p in workdir.iterdir() if p.name.startswith(".")] == []  # temporary sandbox removed

    r = test_user.yurt("exec", out, "hello")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "Hello, world!"
    r = test_user.yurt("run", out, "-g", "hi from run")
    assert r.stdout.strip() == "hi from run"

    owners = _listing(out)
    assert owners["/usr/bin/hello"] == "0/0"
    assert owners["/etc/passwd"] == "0/0"
    apt_partial = owners["/var/cache/apt/archives/partial"]
    if mode == "single":
        assert apt_partial == "0/0"  # packed all-root
    else:
        assert apt_partial.split("/")[0] not in ("0", str(test_user.pw.pw_uid))  # _apt, chowned for real


def test_root_build_installs_a_package_with_apt(debian_rootfs, yurt_cmd, workdir):
    base = _user_copy(debian_rootfs, workdir / "base", None)
    recipe = workdir / "hello.def"
    recipe.write_text(RECIPE.format(base=base))
    out = workdir / "hello-root.sif"
    r = yurt_cmd("build", out, recipe, timeout=900)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "fakeroot" not in r.stderr
    r = yurt_cmd("exec", out, "hello")
    assert r.returncode == 0 and r.stdout.strip() == "Hello, world!", r.stderr
    owners = _listing(out)
    assert owners["/usr/bin/hello"] == "0/0"
    assert owners["/var/cache/apt/archives/partial"].split("/")[0] != "0"  # _apt: real root chowns


def test_debootstrap_needs_root(test_user, user_workdir):
    workdir = user_workdir
    recipe = workdir / "deboot.def"  # refused before any download: the mirror is never contacted
    recipe.write_text("Bootstrap: debootstrap\nOSVersion: bookworm\nMirrorURL: http://mirror.example/debian\n")
    recipe.chmod(0o644)
    r = test_user.yurt("build", workdir / "x.sif", recipe)
    assert r.returncode == 255
    assert "Bootstrap: debootstrap needs root (use a docker/localimage bootstrap, or build as root)" in r.stderr
    assert not (workdir / "x.sif").exists()


MULTISTAGE = """\
FROM {debian} AS build
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null
WORKDIR /src
COPY hello.c .
RUN gcc -O2 -static -o /usr/local/bin/hello hello.c

FROM {small}
COPY --from=build /usr/local/bin/hello /usr/local/bin/hello
ENTRYPOINT ["/usr/local/bin/hello"]
CMD ["world"]
"""

HELLO_C = '#include <stdio.h>\nint main(int c, char **v) { printf("hello, %s\\n", c > 1 ? v[1] : "?"); return 0; }\n'


def test_rootless_dockerfile_multistage_compiles_c_and_ships_a_small_image(
        debian_rootfs, busybox_rootfs, registry_http, yurt_cmd, test_user, user_workdir):
    """Stage 1 compiles with gcc from apt (as the unprivileged user); stage 2 is busybox plus the binary."""
    debian = f"{registry_http.host}/e2e/debian:bookworm"
    small = f"{registry_http.host}/e2e/busybox:1"
    for src, ref in ((debian_rootfs, debian), (busybox_rootfs, small)):
        r = yurt_cmd("push", "--insecure", src, f"docker://{ref}", timeout=600)
        assert r.returncode == 0, r.stderr
    ctx = user_workdir / "ctx"
    ctx.mkdir()
    (ctx / "hello.c").write_text(HELLO_C)
    (ctx / "Dockerfile").write_text(MULTISTAGE.format(debian=debian, small=small))
    subprocess.run(["chown", "-R", f"{test_user.pw.pw_uid}:{test_user.pw.pw_gid}", str(ctx)], check=True)
    env = {"YURT_INSECURE_REGISTRIES": registry_http.host, "YURT_CACHEDIR": str(user_workdir / "cache")}
    out = user_workdir / "hello.sif"
    t0 = time.monotonic()
    r = test_user.yurt("build", out, ctx / "Dockerfile", env=env, timeout=900)
    cold = time.monotonic() - t0
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert test_user.yurt("run", out, env=env).stdout == "hello, world\n"
    assert test_user.yurt("run", out, "yurt", env=env).stdout == "hello, yurt\n"
    assert out.stat().st_size < 8 << 20, "the final stage should hold busybox and one binary, not gcc"
    owners = _listing(out)
    assert owners["/usr/local/bin/hello"] == "0/0" and "/usr/bin/gcc" not in owners
    t0 = time.monotonic()
    r = test_user.yurt("build", "-F", out, ctx / "Dockerfile", env=env, timeout=900)
    warm = time.monotonic() - t0
    assert r.returncode == 0 and "the SIF is cached" in r.stderr, r.stderr
    print(f"Dockerfile multi-stage build: cold {cold:.1f} s, warm {warm:.2f} s")
