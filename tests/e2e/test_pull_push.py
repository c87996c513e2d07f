"""yurt pull / push / exec docker:// against real docker-registry processes.

Interoperability both ways: what skopeo (and umoci) push, yurt pulls and runs;
what yurt pushes, skopeo (and podman, as root) pull.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from installed_yurt import yurt_argv, yurt_on_terminal

pytestmark = [pytest.mark.e2e]


def ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, f"rc={r.returncode}\nstdout={r.stdout}\nstderr={r.stderr}"
    return r.stdout


@pytest.fixture
def cache_env(tmp_path):
    return {"YURT_CACHEDIR": str(tmp_path / "cache"), "YURT_LOCAL_CACHEDIR": str(tmp_path / "local")}


@pytest.fixture(scope="session")
def pushed_busybox(registry_http, umoci_image, skopeo_push, busybox_rootfs, tmp_path_factory):
    """The busybox rootfs as an umoci-built OCI image, pushed with skopeo: host/bb:1."""
    layout = tmp_path_factory.mktemp("umoci") / "layout"
    umoci_image(layout, "1", busybox_rootfs)
    skopeo_push(layout, "1", f"{registry_http.host}/test/bb:1")
    return f"{registry_http.host}/test/bb:1"


def _skopeo_copy(ref: str, layout: Path, tmp_path: Path) -> None:
    """``skopeo copy`` from the registry to an OCI layout: skopeo verifies every blob it copies."""
    subprocess.run(
        [
            "skopeo",
            "--insecure-policy",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            f"docker://{ref}",
            f"oci:{layout}:1",
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")},
    )


def _sif_count(cache: Path) -> int:
    return len(list((cache / "sif").glob("*.sif"))) if (cache / "sif").exists() else 0


def test_pull_skopeo_pushed_image_and_run_it(yurt_cmd, pushed_busybox, cache_env, tmp_path):
    out_sif = tmp_path / "bb.sif"
    r = yurt_cmd("pull", "--insecure", str(out_sif), f"docker://{pushed_busybox}", env=cache_env)
    ok(r)
    assert out_sif.is_file()
    assert ok(yurt_cmd("exec", out_sif, "cat", "/etc/os-release", env=cache_env)).startswith('NAME="BusyBox"')
    # the image config travels in the SIF: Env from `umoci config`
    assert ok(yurt_cmd("exec", out_sif, "sh", "-c", "echo $YURT_UMOCI", env=cache_env)) == "1\n"
    info = json.loads(ok(yurt_cmd("inspect", "--json", out_sif)))
    assert "oci-config.json" in json.dumps(info)


def test_exec_docker_reference_pulls_once(yurt_cmd, pushed_busybox, cache_env):
    env = {**cache_env, "YURT_INSECURE_REGISTRIES": pushed_busybox.split("/")[0]}
    ref = f"docker://{pushed_busybox}"
    first = yurt_cmd("exec", ref, "echo", "cold", env=env)
    assert ok(first) == "cold\n"
    second = yurt_cmd("exec", ref, "echo", "warm", env=env)
    assert ok(second) == "warm\n"
    assert "fetching" not in second.stderr  # nothing downloaded the second time
    assert _sif_count(Path(cache_env["YURT_CACHEDIR"])) == 1


SGR = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # escape sequences: colour, cursor moves


def test_pull_and_push_on_a_terminal_draw_with_rich(pushed_busybox, registry_http, cache_env, tmp_path):
    """On a terminal: rich's bars (a line per blob and a total) and a coloured closing line; with --quiet,
    nothing; with NO_COLOR, the bars without colour.  (Off a terminal: the plain lines the other tests read.)"""
    status, out = yurt_on_terminal("pull", "--insecure", tmp_path / "bb.sif", f"docker://{pushed_busybox}",
                                   env=cache_env)
    assert status == 0, out
    plain = SGR.sub("", out)
    assert "\u2501" in out and re.search(r"^total +\u2501+ .*MiB", plain, re.M), out  # the bars, the total last
    assert "fetching" not in plain  # the plain lines are for logs
    assert re.search(r"\x1b\[[0-9;]*32m", out) and f"yurt: {tmp_path / 'bb.sif'} (sha256:" in plain

    quiet_env = {**cache_env, "YURT_CACHEDIR": str(tmp_path / "q")}
    status, out = yurt_on_terminal("--quiet", "pull", "--insecure", tmp_path / "q.sif", f"docker://{pushed_busybox}",
                                   env=quiet_env)
    assert status == 0 and out == "", out

    status, out = yurt_on_terminal("pull", "--insecure", tmp_path / "nc.sif", f"docker://{pushed_busybox}",
                                   env={**cache_env, "YURT_CACHEDIR": str(tmp_path / "nc"), "NO_COLOR": "1"})
    assert status == 0 and "\u2501" in out, out
    assert not re.search(r"\x1b\[[0-9;]*(3[0-8]|9[0-7])m", out), out

    ref = f"docker://{registry_http.host}/test/from-terminal:1"
    status, out = yurt_on_terminal("push", "--insecure", tmp_path / "bb.sif", ref, env=cache_env)
    assert status == 0, out
    assert f"yurt: pushed {tmp_path / 'bb.sif'} to {ref} (sha256:" in SGR.sub("", out)


def test_exec_docker_on_a_terminal_imports_nothing_after_the_switch(pushed_busybox, cache_env, tmp_path):
    """``yurt exec docker://`` on a terminal downloads with rich's bars; they are gone, and nothing of rich
    (or anything else) is imported, once the container's root is switched (tests/integration/import_guard.py)."""
    import sys
    import sysconfig

    import yurt

    guard = Path(__file__).resolve().parent.parent / "integration" / "import_guard.py"
    site_dir = Path(yurt.__file__).resolve().parent.parent
    if site_dir != Path(sysconfig.get_paths()["purelib"]).resolve():
        pytest.skip("yurt is not installed beside httpx and rich (an editable install): the guard sees one directory")
    report = tmp_path / "report"
    report.write_text("")
    env = {**cache_env, "YURT_INSECURE_REGISTRIES": pushed_busybox.split("/")[0]}
    status, out = yurt_on_terminal("exec", f"docker://{pushed_busybox}", "echo", "ran", env=env,
                                   yurt=[sys.executable, "-I", "-S", str(guard), str(site_dir), str(report)])
    assert status == 0 and "\u2501" in out and out.rstrip().endswith("ran"), out  # downloaded with bars, ran
    lines = report.read_text().splitlines()
    assert any(line.startswith("SWITCH") for line in lines), lines
    assert not [line for line in lines if line.startswith(("IMPORT-AFTER-SWITCH", "REEXEC"))], lines


def test_concurrent_first_pulls_convert_once(pushed_busybox, cache_env):
    """All ranks of a job asking for the same image at once: one download, one conversion, all succeed."""
    env = {
        **os.environ,
        **cache_env,
        "YURT_INSECURE_REGISTRIES": pushed_busybox.split("/")[0],
    }
    procs = [
        subprocess.Popen(
            [*yurt_argv(), "-q", "exec", f"docker://{pushed_busybox}", "echo", str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(6)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for i, (p, (out, err)) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 0, err
        assert out == f"{i}\n"
    cache = Path(cache_env["YURT_CACHEDIR"])
    assert _sif_count(cache) == 1
    assert not list((cache / "tmp").glob("*")) if (cache / "tmp").exists() else True


def test_oras_push_and_pull_round_trip(yurt_cmd, registry_http, busybox_sif, skopeo_inspect, cache_env, tmp_path):
    ref = f"oras://{registry_http.host}/test/sif:1"
    ok(yurt_cmd("push", "--insecure", busybox_sif, ref, env=cache_env))
    manifest = skopeo_inspect(f"{registry_http.host}/test/sif:1", raw=True)
    assert manifest["layers"][0]["mediaType"] == "application/vnd.sylabs.sif.layer.v1.sif"
    assert manifest["config"]["mediaType"] == "application/vnd.sylabs.sif.config.v1+json"
    out_sif = tmp_path / "back.sif"
    ok(yurt_cmd("pull", "--insecure", str(out_sif), ref, env=cache_env))
    digest = hashlib.sha256(Path(busybox_sif).read_bytes()).hexdigest()
    assert hashlib.sha256(out_sif.read_bytes()).hexdigest() == digest
    assert ok(yurt_cmd("exec", out_sif, "echo", "oras", env=cache_env)) == "oras\n"


def test_docker_push_is_a_real_oci_image(yurt_cmd, registry_http, busybox_sif, skopeo_inspect, cache_env, tmp_path):
    ref = f"{registry_http.host}/test/pushed:1"
    ok(yurt_cmd("push", "--insecure", busybox_sif, f"docker://{ref}", env=cache_env))
    manifest = skopeo_inspect(ref, raw=True)
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    # skopeo copies it to an OCI layout: every blob verifies
    layout = tmp_path / "copied"
    _skopeo_copy(ref, layout, tmp_path)
    assert (layout / "index.json").is_file()
    # and yurt runs what it pushed, pulled back through the registry
    assert (
        ok(
            yurt_cmd(
                "exec",
                f"docker://{ref}",
                "echo",
                "back",
                env={**cache_env, "YURT_INSECURE_REGISTRIES": registry_http.host},
            )
        )
        == "back\n"
    )
    # pushing again skips what the registry has; to another repository, blobs are mounted, not sent
    again = ok(yurt_cmd("push", "--insecure", busybox_sif, f"docker://{ref}", env=cache_env))
    assert "0 uploaded" in again and "2 already there" in again
    other = ok(
        yurt_cmd("push", "--insecure", busybox_sif, f"docker://{registry_http.host}/other/pushed:1", env=cache_env)
    )
    assert "0 uploaded" in other and "2 mounted" in other


def test_push_directory_as_oci_image(yurt_cmd, registry_http, busybox_rootfs, cache_env):
    ref = f"{registry_http.host}/test/fromdir:1"
    ok(yurt_cmd("push", "--insecure", busybox_rootfs, f"docker://{ref}", env=cache_env))
    env = {**cache_env, "YURT_INSECURE_REGISTRIES": registry_http.host}
    assert ok(yurt_cmd("exec", f"docker://{ref}", "cat", "/etc/hostname", env=env)).strip() != ""


def test_tls_auth_registry_login_and_pull(
    yurt_cmd, registry_tls_auth, make_oci_image, skopeo_push, tmp_path, cache_env
):
    reg = registry_tls_auth
    layout = tmp_path / "layout"
    make_oci_image(layout, "1", {"hello.txt": "hi\n"})
    skopeo_push(layout, "1", f"{reg.host}/private/img:1", registry=reg)
    home = tmp_path / "home"
    home.mkdir()
    env = {**cache_env, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    # without credentials: one clear line
    r = yurt_cmd(
        "pull", "--ca-file", str(reg.ca_file), str(tmp_path / "x.sif"), f"docker://{reg.host}/private/img:1", env=env
    )
    assert r.returncode == 255 and "yurt registry login" in r.stderr and r.stderr.count("\n") == 1
    # without the CA: TLS verification fails clearly
    r = yurt_cmd(
        "registry", "login", "-u", reg.username, "--password-stdin", reg.host, input=reg.password + "\n", env=env
    )
    assert r.returncode == 255 and ("certificate" in r.stderr.lower() or "tls" in r.stderr.lower())
    ok(
        yurt_cmd(
            "registry",
            "login",
            "-u",
            reg.username,
            "--password-stdin",
            "--ca-file",
            str(reg.ca_file),
            reg.host,
            input=reg.password + "\n",
            env=env,
        )
    )
    auth_files = list((home / ".config").rglob("auth.json"))
    assert len(auth_files) == 1 and (auth_files[0].stat().st_mode & 0o777) == 0o600
    ok(
        yurt_cmd(
            "pull",
            "--ca-file",
            str(reg.ca_file),
            str(tmp_path / "x.sif"),
            f"docker://{reg.host}/private/img:1",
            env=env,
        )
    )
    assert (tmp_path / "x.sif").is_file()


def test_pull_local_oci_layout_and_archive(yurt_cmd, make_oci_image, cache_env, tmp_path):
    layout = tmp_path / "layout"
    make_oci_image(layout, "v1", {"etc/motd": "from a layout\n"})
    out = tmp_path / "l.sif"
    ok(yurt_cmd("pull", str(out), f"oci:{layout}:v1", env=cache_env))
    ok(yurt_cmd("inspect", out))
    archive = tmp_path / "layout.tar"
    subprocess.run(["tar", "-C", str(layout), "-cf", str(archive), "."], check=True)
    ok(yurt_cmd("pull", str(tmp_path / "a.sif"), f"oci-archive:{archive}:v1", env=cache_env))


def test_pull_errors_are_one_line(yurt_cmd, registry_http, cache_env, tmp_path):
    r = yurt_cmd(
        "pull", "--insecure", str(tmp_path / "n.sif"), f"docker://{registry_http.host}/nope/none:1", env=cache_env
    )
    assert r.returncode == 255 and r.stderr.count("\n") == 1 and "MANIFEST_UNKNOWN" in r.stderr
    r = yurt_cmd("pull", str(tmp_path / "n.sif"), "docker://Bad_Name!!", env=cache_env)
    assert r.returncode == 255 and r.stderr.count("\n") == 1
    assert not (tmp_path / "n.sif").exists()
    assert _sif_count(Path(cache_env["YURT_CACHEDIR"])) == 0


@pytest.mark.root
def test_podman_pulls_what_yurt_pushed(yurt_cmd, registry_http, busybox_sif, cache_env):
    import shutil

    if shutil.which("podman") is None:
        pytest.skip("podman is not installed")
    ref = f"{registry_http.host}/test/forpodman:1"
    ok(yurt_cmd("push", "--insecure", busybox_sif, f"docker://{ref}", env=cache_env))
    r = subprocess.run(["podman", "pull", "--tls-verify=false", ref], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    subprocess.run(["podman", "rmi", "-f", ref], capture_output=True)


def test_missing_blob_fails_cleanly(yurt_cmd, registry_http, make_oci_image, skopeo_push, cache_env, tmp_path):
    """A manifest whose layer the registry lost: one error line, nothing half-made in the cache."""
    layout = tmp_path / "layout"
    make_oci_image(layout, "1", {"unique.txt": f"{tmp_path}\n"})
    skopeo_push(layout, "1", f"{registry_http.host}/test/lost:1")
    manifest = json.loads(
        (
            layout
            / "blobs"
            / "sha256"
            / json.loads((layout / "index.json").read_text())["manifests"][0]["digest"].split(":")[1]
        ).read_text()
    )
    layer_hex = manifest["layers"][0]["digest"].split(":")[1]
    data = next(registry_http.root.rglob(f"blobs/sha256/{layer_hex[:2]}/{layer_hex}/data"))
    data.unlink()
    r = yurt_cmd(
        "pull", "--insecure", str(tmp_path / "lost.sif"), f"docker://{registry_http.host}/test/lost:1", env=cache_env
    )
    errors = [line for line in r.stderr.splitlines() if line.startswith("yurt: error:")]
    assert r.returncode == 255 and len(errors) == 1 and "BLOB_UNKNOWN" in errors[0], r.stderr
    assert "Traceback" not in r.stderr
    cache = Path(cache_env["YURT_CACHEDIR"])
    assert _sif_count(cache) == 0
    assert not list(cache.rglob(layer_hex + "*"))
    assert not (tmp_path / "lost.sif").exists()


def test_pull_docker_schema2_and_multi_arch(yurt_cmd, registry_http, make_oci_image, skopeo_push, cache_env, tmp_path):
    host = registry_http.host
    # Docker v2 schema 2 (what `docker push` makes)
    layout = tmp_path / "v2s2"
    make_oci_image(layout, "1", {"etc/motd": "schema2\n"})
    skopeo_push(layout, "1", f"{host}/test/schema2:1", format="v2s2")
    out = tmp_path / "s2.sif"
    ok(yurt_cmd("pull", "--insecure", str(out), f"docker://{host}/test/schema2:1", env=cache_env))
    from yurt.image.source import open_image
    from yurt.image.squashfs import unsquashfs_cat

    image = open_image(str(out))
    assert unsquashfs_cat(str(out), image.offset, "/etc/motd") == b"schema2\n"
    # a multi-arch index: the host's platform by default, another with --arch
    layout = tmp_path / "multi"
    make_oci_image.index(layout, "1", {"amd64": {"arch.txt": "amd64\n"}, "arm64": {"arch.txt": "arm64\n"}})
    skopeo_push(layout, "1", f"{host}/test/multi:1", all_images=True)
    arm = tmp_path / "arm.sif"
    ok(yurt_cmd("pull", "--insecure", "--arch", "arm64", str(arm), f"docker://{host}/test/multi:1", env=cache_env))
    info = json.loads(ok(yurt_cmd("inspect", "--json", "--partitions", arm)))
    assert "arm64" in json.dumps(info)
    r = yurt_cmd(
        "pull",
        "--insecure",
        "--arch",
        "s390x",
        str(tmp_path / "no.sif"),
        f"docker://{host}/test/multi:1",
        env=cache_env,
    )
    assert r.returncode == 255 and "amd64" in r.stderr and "arm64" in r.stderr  # lists what there is


def test_push_zstd_layer(yurt_cmd, registry_http, busybox_sif, skopeo_inspect, cache_env, tmp_path):
    ref = f"{registry_http.host}/test/zstd:1"
    ok(yurt_cmd("push", "--insecure", "--layer-compression", "zstd", busybox_sif, f"docker://{ref}", env=cache_env))
    manifest = skopeo_inspect(ref, raw=True)
    assert manifest["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
    layout = tmp_path / "copied"  # skopeo verifies every blob on copy
    _skopeo_copy(ref, layout, tmp_path)
    env = {**cache_env, "YURT_INSECURE_REGISTRIES": registry_http.host}
    assert ok(yurt_cmd("exec", f"docker://{ref}", "echo", "zstd", env=env)) == "zstd\n"


@pytest.mark.skipif(os.path.lexists("/etc/yurt/yurt.toml"), reason="a real site file is installed")
def test_site_allowed_registries_admit_and_refuse(yurt_cmd, pushed_busybox, cache_env, tmp_path):
    """allowed_registries (yurt.config) lets the listed repository through, even where images named by
    path are restricted, and refuses another before contacting it."""
    host = pushed_busybox.split("/")[0]
    site = tmp_path / "site.toml"
    site.write_text(f'allowed_registries = ["{host}/test"]\nallowed_image_paths = ["{tmp_path}/none"]\n')
    env = {**cache_env, "YURT_INSECURE_REGISTRIES": host, "YURT_SITE_CONFIG": str(site)}
    r = yurt_cmd("exec", f"docker://{pushed_busybox}", "echo", "allowed", env=env)
    assert ok(r) == "allowed\n"
    # under the policy it ran from a private copy in memory: no SIF was written to the (user's) cache
    assert "in memory for this run" in r.stderr and _sif_count(Path(cache_env["YURT_CACHEDIR"])) == 0
    ok(yurt_cmd("pull", str(tmp_path / "img.sif"), f"docker://{pushed_busybox}", env=env))  # pulling still caches
    sif = next((Path(cache_env["YURT_CACHEDIR"]) / "sif").glob("*.sif"))
    r = yurt_cmd("exec", sif, "true", env=env)  # the same image named by path: the path rules apply
    assert r.returncode == 255 and "not in a location the site allows" in r.stderr
    site.write_text(f'allowed_registries = ["{host}/other"]\n')
    r = yurt_cmd("pull", "--force", str(tmp_path / "x.sif"), f"docker://{pushed_busybox}", env=env)
    assert r.returncode == 255 and "is not allowed by the site" in r.stderr
