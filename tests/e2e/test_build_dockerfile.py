"""``yurt build`` of Dockerfiles, for real, as the unprivileged user, from a real registry.

The base image is the busybox rootfs fixture pushed by ``yurt push`` to a docker-registry the
tests start.  Every instruction runs for real (RUN through the launcher); results are run with
``yurt run``/``exec``.  The Debian multi-stage C build is in ``test_build_debian.py`` (root pass:
its base is debootstrapped).
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.userns, pytest.mark.requires("mksquashfs", "unsquashfs", "tar")]

if os.geteuid() == 0:
    pytest.skip("rootless tests run as the unprivileged test user", allow_module_level=True)


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, f"rc={r.returncode}\nstdout={r.stdout}\nstderr={r.stderr}"
    return r


@pytest.fixture(scope="module")
def base(registry_http, busybox_rootfs, tmp_path_factory) -> str:
    """``HOST/base/busybox:1``, pushed with yurt push."""
    from tests.conftest import make_run_yurt

    ref = f"{registry_http.host}/base/busybox:1"
    cache = tmp_path_factory.mktemp("push-cache")
    ok(make_run_yurt()("push", "--insecure", busybox_rootfs, f"docker://{ref}", env={"YURT_CACHEDIR": str(cache)},
                       timeout=120))
    return ref


@pytest.fixture
def env(tmp_path, registry_http) -> dict[str, str]:
    return {"YURT_CACHEDIR": str(tmp_path / "cache"), "YURT_INSECURE_REGISTRIES": registry_http.host}


@pytest.fixture
def context(tmp_path) -> Path:
    ctx = tmp_path / "ctx"
    (ctx / "app" / "sub").mkdir(parents=True)
    (ctx / "app" / "main.sh").write_text("#!/bin/sh\necho main \"$@\"\n")
    (ctx / "app" / "sub" / "data.txt").write_text("data\n")
    (ctx / "app" / "notes.tmp").write_text("ignored\n")
    (ctx / "a.cfg").write_text("a\n")
    (ctx / "b.cfg").write_text("b\n")
    (ctx / "secret").mkdir()
    (ctx / "secret" / "key").write_text("do not copy\n")
    (ctx / ".dockerignore").write_text("secret\n**/*.tmp\n")
    src = tmp_path / "bundle"
    src.mkdir()
    (src / "inside.txt").write_text("from the tarball\n")
    with tarfile.open(ctx / "bundle.tar.gz", "w:gz") as tar:
        tar.add(src / "inside.txt", arcname="inside.txt")
    return ctx


DOCKERFILE = """\
# syntax=docker/dockerfile:1
ARG BASE
FROM ${BASE} AS builder
ARG GREETING=hello
ENV APP_HOME=/srv/app
WORKDIR $APP_HOME
COPY app/ ./
COPY *.cfg /etc/app/
ADD bundle.tar.gz /opt/bundle/
RUN echo "$GREETING from RUN in $(pwd)" > /built.txt && chmod +x main.sh
RUN ["/bin/sh", "-c", "echo exec-form > /exec.txt"]
SHELL ["/bin/sh", "-ec"]
RUN test -f /etc/app/a.cfg; echo shell-ok > /shell.txt
RUN echo 'app:x:1234:1234::/home/app:/bin/sh' >> /etc/passwd && echo 'app:x:1234:' >> /etc/group
COPY --chown=app:app --chmod=0640 a.cfg /srv/owned.cfg
LABEL org.example.stage=builder

FROM builder AS final
COPY --from=builder /built.txt /from-stage.txt
WORKDIR /srv/app
ENTRYPOINT ["/srv/app/main.sh"]
CMD ["default-arg"]
"""


def _build(yurt_cmd, tmp_path, env, context, *extra: str, dockerfile: str = DOCKERFILE, out: str = "img.sif"):
    (context / "Dockerfile").write_text(dockerfile)
    return yurt_cmd("build", *extra, tmp_path / out, context / "Dockerfile", env=env, timeout=300)


def test_dockerfile_build_runs_like_docker(yurt_cmd, tmp_path, env, context, base):
    r = ok(_build(yurt_cmd, tmp_path, env, context, "--build-arg", f"BASE={base}"))
    sif = tmp_path / "img.sif"
    # ENTRYPOINT + CMD, arguments replace CMD, WORKDIR is the cwd of `run`.
    assert ok(yurt_cmd("run", sif, env=env)).stdout == "main default-arg\n"
    assert ok(yurt_cmd("run", sif, "x", "y", env=env)).stdout == "main x y\n"
    script = ("cat /built.txt /exec.txt /shell.txt /from-stage.txt /etc/app/a.cfg /etc/app/b.cfg "
              "/opt/bundle/inside.txt /srv/app/sub/data.txt; echo $APP_HOME; "
              "test ! -e /srv/app/notes.tmp && echo tmp-ignored; test ! -e /srv/app/secret && echo secret-ignored")
    out = ok(yurt_cmd("exec", sif, "/bin/sh", "-c", script, env=env)).stdout.splitlines()
    assert out == ["hello from RUN in /srv/app", "exec-form", "shell-ok", "hello from RUN in /srv/app", "a", "b",
                   "from the tarball", "data", "/srv/app", "tmp-ignored", "secret-ignored"]
    inspect = json.loads(ok(yurt_cmd("inspect", "--json", sif, env=env)).stdout)
    text = json.dumps(inspect)
    assert "org.example.stage" in text and "builder" in text
    assert "fakeroot" in r.stderr


def test_dockerfile_chown_and_chmod_are_recorded_in_the_image(yurt_cmd, tmp_path, env, context, base):
    from tests.integration.test_build import has_subuid, owner_of, sif_listing

    if not has_subuid():
        pytest.skip("--chown needs a subuid range (single-id builds pack every file as root)")
    ok(_build(yurt_cmd, tmp_path, env, context, "--build-arg", f"BASE={base}"))
    listing = sif_listing(tmp_path / "img.sif")
    assert owner_of(listing, "/srv/owned.cfg") == "1234/1234"
    assert owner_of(listing, "/built.txt") == "0/0"
    line = next(x for x in listing.splitlines() if x.endswith(" /srv/owned.cfg"))
    assert line.startswith("-rw-r-----")


def test_dockerfile_rebuild_is_cached_and_a_changed_file_reruns_from_its_copy(yurt_cmd, tmp_path, env, context, base):
    ok(_build(yurt_cmd, tmp_path, env, context, "--build-arg", f"BASE={base}"))
    again = ok(_build(yurt_cmd, tmp_path, env, context, "--build-arg", f"BASE={base}", out="again.sif"))
    steps = [line for line in again.stderr.splitlines() if ": RUN " in line or ": COPY " in line]
    assert "the SIF is cached" in again.stderr and steps and all(line.endswith(": cached") for line in steps)
    assert (tmp_path / "img.sif").read_bytes() == (tmp_path / "again.sif").read_bytes()
    # An ignored file does not change anything; a copied one reruns its COPY and what follows.
    (context / "app" / "other.tmp").write_text("still ignored\n")
    ignored = ok(_build(yurt_cmd, tmp_path, env, context, "--build-arg", f"BASE={base}", out="ignored.sif"))
    assert "the SIF is cached" in ignored.stderr
    (context / "b.cfg").write_text("b2\n")
    changed = ok(_build(yurt_cmd, tmp_path, env, context, "--build-arg", f"BASE={base}", out="changed.sif"))
    assert "COPY app/ ./: cached" in changed.stderr
    assert "COPY *.cfg /etc/app/: cached" not in changed.stderr
    out = ok(yurt_cmd("exec", tmp_path / "changed.sif", "cat", "/etc/app/b.cfg", env=env)).stdout
    assert out == "b2\n"


def test_target_stage_and_dockerfile_flag(yurt_cmd, tmp_path, env, context, base):
    (context / "build.Dockerfile").write_text(DOCKERFILE)
    ok(yurt_cmd("build", "--dockerfile", context / "build.Dockerfile", "--target", "builder", "--build-arg",
                f"BASE={base}", tmp_path / "builder.sif", context, env=env, timeout=300))
    r = yurt_cmd("exec", tmp_path / "builder.sif", "cat", "/from-stage.txt", env=env)
    assert r.returncode != 0  # that is the final stage's file
    r = yurt_cmd("build", "--dockerfile", context / "build.Dockerfile", "--target", "nosuch", "--build-arg",
                 f"BASE={base}", tmp_path / "x.sif", context, env=env)
    assert r.returncode != 0 and "--target nosuch" in r.stderr and "builder" in r.stderr


@pytest.mark.parametrize("body,message", [
    ("FROM {base}\nRUN exit 7\n", "Dockerfile:2: RUN failed with exit status 7"),
    ("FROM {base}\nCOPY missing.txt /x\n", "Dockerfile:2:"),
    ("FROM {base}\nCOPY ../outside /x\n", "outside the build context"),
    ("FROM {base}\nFROBNICATE x\n", "Dockerfile:2:"),
    ("FROM {base}\nCOPY a.cfg b.cfg /dest\n", "must end with /"),
    ("FROM {base}\nCOPY --from=nosuchstage /x /y\n", "Dockerfile:2:"),
])
def test_dockerfile_errors_are_one_clear_line(yurt_cmd, tmp_path, env, context, base, body, message):
    r = _build(yurt_cmd, tmp_path, env, context, dockerfile=body.format(base=base))
    assert r.returncode != 0
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "img.sif").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".yurt-build-")]


def test_definition_file_docker_bootstrap_from_a_registry(yurt_cmd, tmp_path, env, base):
    recipe = tmp_path / "img.def"
    recipe.write_text(f"Bootstrap: docker\nFrom: {base}\n\n%post\n    echo built > /built.txt\n\n"
                      "%runscript\n    cat /built.txt\n")
    ok(yurt_cmd("build", tmp_path / "img.sif", recipe, env=env, timeout=300))
    assert ok(yurt_cmd("run", tmp_path / "img.sif", env=env)).stdout == "built\n"
    labels = ok(yurt_cmd("inspect", "--labels", tmp_path / "img.sif", env=env)).stdout
    assert f"deffile.from: {base}" in labels or base in labels


@pytest.mark.parametrize("kind", ["deffile", "dockerfile"])
def test_builds_are_reproducible_with_source_date_epoch(yurt_cmd, tmp_path, context, base, registry_http, kind):
    """Two uncached builds of the same pinned inputs: the same SIF bytes (times clamped, files sorted)."""
    if kind == "deffile":
        recipe = tmp_path / "img.def"
        recipe.write_text(f"Bootstrap: docker\nFrom: {base}\n\n%files\n    {context}/app /opt/app\n\n"
                          "%post\n    mkdir -p /var/x && echo x > /var/x/y\n\n"
                          "%labels\n    Version 1\n")
    else:
        recipe = context / "Dockerfile"
        recipe.write_text(f"FROM {base}\nCOPY app/ /opt/app/\nRUN mkdir -p /var/x && echo x > /var/x/y\n"
                          "LABEL version=1\nCMD [\"/bin/true\"]\n")
    digests = []
    for n in range(2):
        env = {"YURT_CACHEDIR": str(tmp_path / f"cache{n}"), "YURT_INSECURE_REGISTRIES": registry_http.host,
               "SOURCE_DATE_EPOCH": "1700000000"}
        out = tmp_path / f"out{n}.sif"
        ok(yurt_cmd("build", "--no-cache", out, recipe, env=env, timeout=300))
        digests.append(ok(yurt_cmd("inspect", "--digest", out, env=env)).stdout.strip())
        os.utime(context / "app" / "main.sh", (1, 1 + n))  # a different mtime on the host must not matter
        time.sleep(1.1)  # every file the build writes gets another mtime
    assert digests[0] == digests[1]


def test_user_applies_to_later_run_steps(yurt_cmd, tmp_path, env, context, base):
    from tests.integration.test_build import has_subuid

    dockerfile = (f"FROM {base}\n"
                  "RUN echo 'app:x:1234:1234::/home/app:/bin/sh' >> /etc/passwd && echo 'app:x:1234:' >> /etc/group "
                  "&& echo 'extra:x:2000:app' >> /etc/group && mkdir -p /home/app && chown 1234:1234 /home/app\n"
                  "USER app\n"
                  "WORKDIR /work/app\n"
                  "RUN id -u > /tmp/uid; id -G > /tmp/groups; echo $HOME > /tmp/home; touch /home/app/mine; "
                  "touch /work/app/made-by-app\n"
                  "USER root\n"
                  "RUN cp /tmp/uid /tmp/groups / && cp /tmp/home /home-dir && id -u > /root-uid\n")
    r = _build(yurt_cmd, tmp_path, env, context, dockerfile=dockerfile)
    if not has_subuid():
        assert r.returncode == 0 and "USER app: with a single-id fakeroot" in r.stderr
        return
    ok(r)
    out = ok(yurt_cmd("exec", tmp_path / "img.sif", "cat", "/uid", "/groups", "/home-dir", "/root-uid", env=env)).stdout
    assert out.split("\n")[:4] == ["1234", "1234 2000", "/home/app", "0"]


def test_add_url_downloads_into_the_image(yurt_cmd, tmp_path, env, context, base):
    import functools
    import http.server
    import threading

    served = tmp_path / "www"
    served.mkdir()
    (served / "tool.txt").write_text("downloaded\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/tool.txt"
        dockerfile = f"FROM {base}\nADD {url} /opt/\nADD {url} /opt/renamed.txt\n"
        ok(_build(yurt_cmd, tmp_path, env, context, dockerfile=dockerfile))
        out = ok(yurt_cmd("exec", "--fakeroot", tmp_path / "img.sif", "sh", "-c", "cat /opt/tool.txt /opt/renamed.txt; "
                          "stat -c %a /opt/tool.txt", env=env)).stdout
        assert out == "downloaded\ndownloaded\n600\n"
        missing = _build(yurt_cmd, tmp_path, env, context, dockerfile=f"FROM {base}\nADD {url}.nope /opt/\n",
                         out="missing.sif")
        assert missing.returncode != 0 and "Dockerfile:2: ADD" in missing.stderr and "404" in missing.stderr
    finally:
        server.shutdown()


def test_add_sniffs_archives_by_content_and_keeps_their_modes(yurt_cmd, tmp_path, env, context, base):
    src = tmp_path / "tool"
    src.mkdir()
    (src / "run.sh").write_text("#!/bin/sh\necho tool\n")
    (src / "run.sh").chmod(0o750)
    with tarfile.open(context / "tool.bin", "w:gz") as tar:  # an archive without an archive's name
        tar.add(src / "run.sh", arcname="run.sh")
    (context / "notes.tar.gz").write_text("not an archive\n")  # the name lies: copied as it is
    dockerfile = f"FROM {base}\nADD tool.bin /opt/tool/\nADD notes.tar.gz /opt/\n"
    ok(_build(yurt_cmd, tmp_path, env, context, dockerfile=dockerfile))
    out = ok(yurt_cmd("exec", "--fakeroot", tmp_path / "img.sif", "sh", "-c",
                      "stat -c %a /opt/tool/run.sh; /opt/tool/run.sh; cat /opt/notes.tar.gz", env=env)).stdout
    assert out == "750\ntool\nnot an archive\n"


def test_copy_from_an_image(yurt_cmd, tmp_path, env, context, base):
    dockerfile = f"FROM {base}\nCOPY --from={base} /bin/busybox /opt/busybox\nRUN /opt/busybox true\n"
    ok(_build(yurt_cmd, tmp_path, env, context, dockerfile=dockerfile))
    assert ok(yurt_cmd("exec", tmp_path / "img.sif", "/opt/busybox", "echo", "copied", env=env)).stdout == "copied\n"
    again = ok(_build(yurt_cmd, tmp_path, env, context, dockerfile=dockerfile, out="again.sif"))
    assert f"COPY --from={base} /bin/busybox /opt/busybox: cached" in again.stderr
