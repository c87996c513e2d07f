"""yurt as Apptainer against a real docker-registry: ``pull --name/--dir/--disable-cache/--sandbox``,
``--nohttps``/``--no-https``/``--insecure`` on every command that reaches a registry, ``build OUT
docker://|oras://|docker-archive:``, and the ``APPTAINER_*`` variables for them (README, "Using yurt as
Apptainer").  Run through a link named ``apptainer`` to the installed yurt.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest
from installed_yurt import make_run_yurt, yurt_link

pytestmark = [pytest.mark.e2e]


def ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, f"rc={r.returncode}\nstdout={r.stdout}\nstderr={r.stderr}"
    return r.stdout


@pytest.fixture(scope="module")
def pushed(registry_http, umoci_image, skopeo_push, busybox_rootfs, tmp_path_factory) -> str:
    """The busybox rootfs as an OCI image on the plain-HTTP registry: host/compat/bb:1."""
    layout = tmp_path_factory.mktemp("umoci-compat") / "layout"
    umoci_image(layout, "1", busybox_rootfs)
    skopeo_push(layout, "1", f"{registry_http.host}/compat/bb:1")
    return f"{registry_http.host}/compat/bb:1"


@pytest.fixture
def apptainer(tmp_path):
    link = yurt_link(tmp_path, "apptainer")
    cache = tmp_path / "cache"

    def run(*args, env=None, timeout=300, cwd=None):
        full = {**os.environ, "YURT_CACHEDIR": str(cache), "YURT_LOCAL_CACHEDIR": str(tmp_path / "local"),
                **(env or {})}
        for k in [k for k, v in full.items() if v is None]:
            del full[k]
        return subprocess.run([str(link), *map(str, args)], capture_output=True, text=True, cwd=cwd or tmp_path,
                              env=full, stdin=subprocess.DEVNULL, timeout=timeout, check=False)

    run.cache = cache
    return run


def _sifs(cache: Path) -> list[Path]:
    return list((cache / "sif").glob("*.sif")) if (cache / "sif").is_dir() else []


def test_pull_name_dir_and_variables(apptainer, pushed, tmp_path):
    ref = f"docker://{pushed}"
    ok(apptainer("pull", "--nohttps", "--name", "named.sif", ref))
    assert ok(apptainer("exec", "named.sif", "echo", "pulled")) == "pulled\n"
    d = tmp_path / "dir"
    d.mkdir()
    ok(apptainer("pull", "-U", "--no-https", "--dir", d, ref))
    assert (d / "bb_1.sif").is_file()  # Apptainer's default name, in --dir
    ok(apptainer("pull", "--allow-unsigned", "--insecure", "--dir", d, "--name", "n.sif", ref))
    assert (d / "n.sif").is_file()
    r = apptainer("pull", "--nohttps", "--dir", d, "--name", "n.sif", ref)
    assert r.returncode == 255 and "already exists" in r.stderr
    ok(apptainer("pull", "-F", "--nohttps", "--dir", d, "--name", "n.sif", ref))
    ok(apptainer("pull", "--force", "--nohttps", "--dir", d, "--name", "n.sif", ref))
    # the variables: APPTAINER_NOHTTPS, SINGULARITY_PULLFOLDER, APPTAINER_CACHEDIR
    folder, cache = tmp_path / "folder", tmp_path / "acache"
    folder.mkdir()
    env = {"YURT_CACHEDIR": None, "APPTAINER_CACHEDIR": str(cache), "APPTAINER_NOHTTPS": "1",
           "SINGULARITY_PULLFOLDER": str(folder)}
    ok(apptainer("pull", ref, env=env))
    assert (folder / "bb_1.sif").is_file() and _sifs(cache)
    r = apptainer("pull", "--name", "tls.sif", ref, env={**env, "APPTAINER_NOHTTPS": None})
    assert r.returncode == 255 and r.stderr.count("\n") == 1  # TLS to a plain-HTTP registry: refused
    # Nextflow's line: pull --name FILE REF into its cache directory
    (tmp_path / "nxf").mkdir()
    ok(apptainer("pull", "--name", tmp_path / "nxf" / "img.sif", ref, env={**env, "SINGULARITY_PULLFOLDER": None}))
    assert (tmp_path / "nxf/img.sif").is_file()


def test_every_registry_command_takes_nohttps(apptainer, pushed, tmp_path):
    ref = f"docker://{pushed}"
    assert ok(apptainer("exec", "--nohttps", ref, "echo", "exec")) == "exec\n"
    assert ok(apptainer("exec", "--no-https", ref, "echo", "again")) == "again\n"
    assert ok(apptainer("run", "--insecure", ref, "echo", "run")).endswith("run\n")
    r = apptainer("shell", "--nohttps", ref, "-c", "echo shell")
    assert ok(r) == "shell\n"
    env = {"YURT_RUNTIMEDIR": str(tmp_path / "run")}
    try:
        ok(apptainer("instance", "start", "--nohttps", ref, "reg", env=env))
        assert ok(apptainer("exec", "instance://reg", "echo", "joined", env=env)) == "joined\n"
    finally:
        apptainer("instance", "stop", "--all", env=env)
    ok(apptainer("build", "--nohttps", tmp_path / "b.sif", ref))
    assert ok(apptainer("exec", tmp_path / "b.sif", "echo", "built")) == "built\n"


def test_build_from_registry_references(apptainer, pushed, registry_http, busybox_sif, tmp_path):
    ref = f"docker://{pushed}"
    ok(apptainer("build", "--nohttps", "--arch", "amd64", "--arch-variant", "", tmp_path / "a.sif", ref))
    assert ok(apptainer("exec", tmp_path / "a.sif", "echo", "a")) == "a\n"
    # oras:// (a SIF pushed as Apptainer pushes it)
    oras = f"oras://{registry_http.host}/compat/sif:1"
    ok(make_run_yurt(tmp_path)("push", "--insecure", busybox_sif, oras))
    ok(apptainer("build", "--nohttps", tmp_path / "o.sif", oras))
    assert ok(apptainer("exec", tmp_path / "o.sif", "echo", "o")) == "o\n"
    # docker-archive:FILE (docker save), also cwltool's docker-archive://RELATIVE, and as a sandbox
    subprocess.run(["skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false", ref,
                    f"docker-archive:{tmp_path / 'saved.tar'}:compat/bb:1"], check=True, capture_output=True,
                   env={**os.environ, "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")})
    ok(apptainer("build", tmp_path / "da.sif", f"docker-archive:{tmp_path / 'saved.tar'}"))
    ok(apptainer("build", "--sandbox", tmp_path / "dasbx", "docker-archive://saved.tar"))
    assert (tmp_path / "dasbx/bin/busybox").is_file()
    r = apptainer("build", tmp_path / "dd.sif", "docker-daemon:compat/bb:1")
    assert r.returncode == 255 and "docker-daemon:" in r.stderr and "docker save" in r.stderr


def test_disable_cache_keeps_nothing(apptainer, pushed, tmp_path):
    ref = f"docker://{pushed}"
    ok(apptainer("pull", "--nohttps", "--disable-cache", "nc.sif", ref))
    assert ok(apptainer("exec", "nc.sif", "echo", "x")) == "x\n"
    assert not _sifs(apptainer.cache)
    assert ok(apptainer("exec", "--nohttps", "--disable-cache", ref, "echo", "y")) == "y\n"
    ok(apptainer("build", "--nohttps", "--disable-cache", tmp_path / "b.sif", ref))
    assert not _sifs(apptainer.cache)
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob(f"yurt-nocache-*{os.getpid()}"))
    ok(apptainer("exec", "--nohttps", ref, "true"))
    assert _sifs(apptainer.cache)  # without it, the cache is used


def test_pull_sandbox(apptainer, pushed, tmp_path):
    ok(apptainer("pull", "--nohttps", "--sandbox", f"docker://{pushed}"))
    assert (tmp_path / "bb_1/bin/busybox").is_file()  # the default name, less .sif
    assert ok(apptainer("exec", tmp_path / "bb_1", "echo", "sbx")) == "sbx\n"
    if os.geteuid() != 0:  # the unpacked tree is the user's own, as Apptainer's unprivileged pull gives it
        owners = {os.lstat(os.path.join(top, n)).st_uid for top, dirs, files in os.walk(tmp_path / "bb_1")
                  for n in dirs + files}
        assert owners == {os.getuid()}, owners
    subprocess.run(["rm", "-rf", str(tmp_path / "bb_1")], check=True)


def test_authfile_and_apptainer_docker_credentials(apptainer, registry_tls_auth, make_oci_image, skopeo_push,
                                                   tmp_path):
    reg = registry_tls_auth
    layout = tmp_path / "layout"
    make_oci_image(layout, "1", {"hello.txt": "hi\n"})
    skopeo_push(layout, "1", f"{reg.host}/private/compat:1", registry=reg)
    ref = f"docker://{reg.host}/private/compat:1"
    home = tmp_path / "home"
    home.mkdir()
    base = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "REGISTRY_AUTH_FILE": None}
    ca = ("--ca-file", reg.ca_file)
    r = apptainer("pull", *ca, "--name", "none.sif", ref, env=base)
    assert r.returncode == 255 and r.stderr.count("\n") == 1
    auth = tmp_path / "auth.json"
    token = base64.b64encode(f"{reg.username}:{reg.password}".encode()).decode()
    auth.write_text(json.dumps({"auths": {reg.host: {"auth": token}}}))
    ok(apptainer("pull", *ca, "--authfile", auth, "--name", "a.sif", ref, env=base))
    env = {**base, "APPTAINER_DOCKER_USERNAME": reg.username, "APPTAINER_DOCKER_PASSWORD": reg.password}
    ok(apptainer("pull", *ca, "--name", "b.sif", ref, env=env))
    env = {**base, "SINGULARITY_DOCKER_USERNAME": reg.username, "SINGULARITY_DOCKER_PASSWORD": reg.password}
    ok(apptainer("pull", *ca, "--force", "--name", "b.sif", ref, env=env))
