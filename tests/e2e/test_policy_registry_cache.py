"""Under a site policy, images from an allowed registry (or an allowed local OCI layout) never run from
the user's image cache (issue 10: "any other cache a user can write is not trusted").

Run as root (``pytest -m root``), inside a private mount namespace with an empty ``/etc/yurt`` (``make
test`` gives each pass one): a real ``/etc/yurt/yurt.toml`` is installed for one test and removed
afterwards.  A real ``docker-registry`` holds two images, each busybox with ``/marker``: ``allowed/img``
(``good``) and ``other/img`` (``bad``), and the site allows only the ``allowed/`` repositories of it
(and images under ``<shared>/images``).  The unprivileged test user is the attacker: they pull the
allowed image, then replace what the cache holds for it with the disallowed image's content:

* the converted SIF (``sif/<manifest digest>.sif``);
* the layer blob, with the bad image's gzip layer padded to the very size of the good one (a valid
  layer: gzip ignores what follows its stream), the SIF being removed so that the layer is read;
* for ``oras://`` the SIF the artifact's blob was linked to, and the blob itself;
* for ``oci:DIR`` the SIF converted from the (root-owned, allowed) layout.

Each attack is first made without the site file, where it must work (``bad`` runs: the test can fail),
then with it, where ``good`` must run and the damaged blob must have been repaired (downloaded again).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
from installed_yurt import yurt_argv

pytestmark = [pytest.mark.e2e, pytest.mark.root]

SITE = Path("/etc/yurt/yurt.toml")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True, scope="module")
def _no_machine_policy():
    """The shared ``site_file`` fixture replaces a site file for the test; this module refuses to run where
    one exists at all: that is a machine's (or another test's) policy, and these tests must run in a mount
    namespace of their own (see the module docstring)."""
    if SITE.exists():
        pytest.skip(f"{SITE} exists: run the root tests in a private mount namespace with an empty /etc/yurt")


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer(rootfs: Path, marker: str, padding: int) -> bytes:
    """``rootfs`` plus ``/marker`` (and ``/padding``, random bytes) as a gzip tar layer."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(rootfs, arcname=".", recursive=True)
        extra = {"marker": f"{marker}\n".encode()}
        if padding:
            extra["padding"] = os.urandom(padding)
        for name, data in extra.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def _layout(layout: Path, tag: str, layer: bytes) -> dict:
    """A one-layer OCI image layout; returns its manifest's and layer's digests and the layer's size."""
    def blob(data: bytes) -> dict:
        digest = _sha256(data)
        path = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return {"digest": digest, "size": len(data)}

    layout.mkdir(parents=True, exist_ok=True)
    diff_id = _sha256(gzip.decompress(layer))
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Env": ["PATH=/bin:/usr/bin"], "Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}, sort_keys=True).encode()
    layer_desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **blob(layer)}
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(config)},
                           "layers": [layer_desc]}, sort_keys=True).encode()
    desc = {"mediaType": OCI_MANIFEST, **blob(manifest),
            "annotations": {"org.opencontainers.image.ref.name": tag}}
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [desc]}))
    return {"manifest": desc["digest"], "layer": layer_desc["digest"], "layer_size": layer_desc["size"]}


@pytest.fixture(scope="module")
def world(tmp_path_factory, busybox_rootfs, registry_http, skopeo_push):
    """The registry's two images, a root-owned allowed OCI layout, SIFs of both, and the bad layer."""
    shared = Path(tempfile.mkdtemp(prefix="yurt-policy-registry-", dir="/var/tmp"))
    os.chmod(shared, 0o755)
    try:
        good_layer = _layer(busybox_rootfs, "good", 256 << 10)  # random padding: larger than the bad one
        bad_layer = _layer(busybox_rootfs, "bad", 0)
        assert len(bad_layer) < len(good_layer)
        w = {"shared": shared, "host": registry_http.host, "bad_layer": bad_layer}
        w["good"] = _layout(shared / "images" / "layout", "1", good_layer)
        _layout(shared / "elsewhere" / "layout", "1", bad_layer)
        skopeo_push(shared / "images" / "layout", "1", f"{registry_http.host}/allowed/img:1")
        skopeo_push(shared / "elsewhere" / "layout", "1", f"{registry_http.host}/other/img:1")
        for name, marker, padding in (("good", "good", 256 << 10), ("bad", "bad", 0)):
            tree = shared / "trees" / name
            shutil.copytree(busybox_rootfs, tree, symlinks=True)
            (tree / "marker").write_text(f"{marker}\n")
            if padding:
                (tree / "padding").write_bytes(os.urandom(padding))
            sif = shared / "elsewhere" / f"{name}.sif"
            r = subprocess.run([*yurt_argv(), "build", str(sif), str(tree)], capture_output=True, text=True,
                               timeout=300, cwd="/")
            assert r.returncode == 0, r.stderr
        good_sif, bad_sif = (shared / "elsewhere" / "good.sif"), (shared / "elsewhere" / "bad.sif")
        assert bad_sif.stat().st_size < good_sif.stat().st_size
        # pushed by root, before any policy; the same size as the good one, padded (SIF readers ignore the tail)
        r = subprocess.run([*yurt_argv(), "push", "--insecure", str(good_sif), f"oras://{registry_http.host}/allowed/sif:1"],
                           capture_output=True, text=True, timeout=300, cwd="/")
        assert r.returncode == 0, r.stderr
        padded = shared / "elsewhere" / "bad-padded.sif"
        padded.write_bytes(bad_sif.read_bytes().ljust(good_sif.stat().st_size, b"\0"))
        padded_layer = shared / "elsewhere" / "bad-layer.gz"
        padded_layer.write_bytes(bad_layer.ljust(w["good"]["layer_size"], b"\0"))
        w["bad_sif"], w["bad_padded_sif"], w["bad_padded_layer"] = bad_sif, padded, padded_layer
        w["oras_digest"] = _sha256(good_sif.read_bytes())
        for root, dirs, files in os.walk(shared):
            for name in dirs + files:
                os.chmod(os.path.join(root, name), 0o755 if name in dirs else 0o644)
        yield w
    finally:
        shutil.rmtree(shared, ignore_errors=True)


@pytest.fixture
def home(world, test_user):
    """A fresh directory of the test user's (caches live here), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="user-", dir=world["shared"]))
    os.chown(path, test_user.pw.pw_uid, test_user.pw.pw_gid)
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def policy(world) -> str:
    return (f'allowed_registries = ["{world["host"]}/allowed"]\n'
            f'allowed_image_paths = ["{world["shared"]}/images"]\n')


def env_for(world, home: Path, cache: str) -> dict[str, str]:
    return {"YURT_CACHEDIR": str(home / cache), "YURT_LOCAL_CACHEDIR": str(home / (cache + "-local")),
            "YURT_INSECURE_REGISTRIES": world["host"]}


def as_user(user, script: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``sh -c script`` as ``user``; ``$YURT`` runs the yurt under test."""
    extra = [f"{k}={v}" for k, v in env.items()]
    argv = ["runuser", "-u", user.name, "--", "env", f"HOME={user.pw.pw_dir}", f"YURT={' '.join(yurt_argv())}",
            *extra, "sh", "-c", script]
    return subprocess.run(argv, capture_output=True, text=True, cwd="/", timeout=600)


def marker(user, ref: str, env: dict[str, str]) -> str:
    r = as_user(user, f'$YURT exec "{ref}" cat /marker', env)
    assert r.returncode == 0, f"rc={r.returncode}\nstdout={r.stdout}\nstderr={r.stderr}"
    return r.stdout.strip()


def plant(user, src: Path, dest: Path, env: dict[str, str]) -> None:
    """The user replaces ``dest`` (in their cache) with a copy of ``src``."""
    r = as_user(user, f'rm -f "{dest}" && cp "{src}" "{dest}"', env)
    assert r.returncode == 0, r.stderr


def sif_of(cache: Path, digest: str) -> Path:
    return cache / "sif" / (digest.split(":", 1)[1] + ".sif")


def blob_of(cache: Path, digest: str) -> Path:
    return cache / "blobs" / "sha256" / digest.split(":", 1)[1]


def digest_of(path: Path) -> str:
    return _sha256(path.read_bytes())


# --------------------------------------------------------------------------- docker://


def test_planted_sif_in_the_cache_is_not_run_under_policy(site_file, world, home, test_user):
    ref = f"docker://{world['host']}/allowed/img:1"
    env = env_for(world, home, "cache")
    cache = home / "cache"
    assert marker(test_user, ref, env) == "good"
    sif = sif_of(cache, world["good"]["manifest"])
    assert sif.is_file()

    plant(test_user, world["bad_sif"], sif, env)  # without a policy the cache decides what runs
    assert marker(test_user, ref, env) == "bad"

    site_file.install(policy(world))
    refused = as_user(test_user, f'$YURT exec docker://{world["host"]}/other/img:1 cat /marker', env)
    assert refused.returncode != 0 and "bad" not in refused.stdout, refused.stdout
    assert "not allowed" in refused.stderr, refused.stderr
    r = as_user(test_user, f'$YURT exec "{ref}" cat /marker', env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "good"
    assert "in memory for this run" in r.stderr, r.stderr
    assert digest_of(sif) == digest_of(world["bad_sif"])  # still planted: simply not used

    # a fresh cache under the policy: blobs are kept (that is the download), no SIF is written
    env2 = env_for(world, home, "fresh")
    assert marker(test_user, ref, env2) == "good"
    fresh = home / "fresh"
    assert blob_of(fresh, world["good"]["layer"]).is_file()
    assert not list((fresh / "sif").glob("*.sif")) if (fresh / "sif").exists() else True
    # `yurt pull` itself still fills the cache as always (pulling is not running)
    r = as_user(test_user, f'$YURT pull "{home}/pulled.sif" "{ref}"', env2)
    assert r.returncode == 0, r.stderr
    assert sif_of(fresh, world["good"]["manifest"]).is_file()


def test_planted_layer_blob_is_repaired_not_run_under_policy(site_file, world, home, test_user):
    ref = f"docker://{world['host']}/allowed/img:1"
    env = env_for(world, home, "cache")
    cache = home / "cache"
    r = as_user(test_user, f'$YURT pull "{home}/img.sif" "{ref}"', env)
    assert r.returncode == 0, r.stderr
    blob = blob_of(cache, world["good"]["layer"])
    assert digest_of(blob) == world["good"]["layer"]

    # The bad layer, padded to the good one's size: the cache keeps it (its size is right), and without a
    # policy the next conversion (the SIF removed) reads it.
    plant(test_user, world["bad_padded_layer"], blob, env)
    sif_of(cache, world["good"]["manifest"]).unlink()
    assert blob.stat().st_size == world["good"]["layer_size"]
    assert marker(test_user, ref, env) == "bad"

    site_file.install(policy(world))
    plant(test_user, world["bad_padded_layer"], blob, env)
    assert marker(test_user, ref, env) == "good"
    assert digest_of(blob) == world["good"]["layer"]  # the damaged blob was downloaded again


# --------------------------------------------------------------------------- oras://


def test_planted_oras_sif_and_blob_are_not_run_under_policy(site_file, world, home, test_user):
    ref = f"oras://{world['host']}/allowed/sif:1"
    env = env_for(world, home, "cache")
    cache = home / "cache"
    assert marker(test_user, ref, env) == "good"
    sifs = list((cache / "sif").glob("*.sif"))
    assert len(sifs) == 1
    plant(test_user, world["bad_sif"], sifs[0], env)
    assert marker(test_user, ref, env) == "bad"

    site_file.install(policy(world))
    blob = blob_of(cache, world["oras_digest"])
    plant(test_user, world["bad_padded_sif"], blob, env)  # same size as the real one
    assert marker(test_user, ref, env) == "good"
    assert digest_of(blob) == world["oras_digest"]  # repaired
    assert digest_of(sifs[0]) == digest_of(world["bad_sif"])  # still planted, never used


# --------------------------------------------------------------------------- oci:DIR


def test_planted_sif_of_an_allowed_oci_layout_is_not_run_under_policy(site_file, world, home, test_user):
    ref = f"oci:{world['shared']}/images/layout:1"
    env = env_for(world, home, "cache")
    cache = home / "cache"
    assert marker(test_user, ref, env) == "good"
    sif = sif_of(cache, world["good"]["manifest"])
    assert sif.is_file()
    plant(test_user, world["bad_sif"], sif, env)
    assert marker(test_user, ref, env) == "bad"

    site_file.install(policy(world))
    assert marker(test_user, ref, env) == "good"
    refused = as_user(test_user, f'$YURT exec "oci:{world["shared"]}/elsewhere/layout:1" cat /marker', env)
    assert refused.returncode != 0 and "bad" not in refused.stdout


# --------------------------------------------------------------------------- every way of running it


def test_the_private_copy_runs_every_way_under_policy(site_file, world, home, test_user):
    """The memory copy reaches squashfuse, unsquashfs (--unsquash), the loop device (root), an instance (and
    a join to it, which converts nothing), and --sharens."""
    ref = f"docker://{world['host']}/allowed/img:1"
    env = env_for(world, home, "cache")
    site_file.install(policy(world))
    env["XDG_RUNTIME_DIR"] = str(home / "run")  # this test's instances and --sharens state, no one else's
    script = (f'mkdir -m 700 "{home}/run" && $YURT exec --unsquash "{ref}" cat /marker && '
              f'$YURT exec --sharens --sharens-tag regcache "{ref}" cat /marker && '
              f'$YURT instance start "{ref}" regcache && '
              f'$YURT exec instance://regcache cat /marker; rc=$?; $YURT instance stop regcache; exit $rc')
    r = as_user(test_user, script, env)
    assert r.returncode == 0, f"stdout={r.stdout}\nstderr={r.stderr}"
    assert [ln for ln in r.stdout.split("\n") if ln in ("good", "bad")] == ["good"] * 3, r.stdout
    assert "for this run only" in r.stderr  # --unsquash: unpacked privately, from the memory copy
    # three conversions: --unsquash, --sharens, the instance; the join converts nothing
    assert r.stderr.count("in memory for this run") == 3, r.stderr

    root_env = {**env, "YURT_CACHEDIR": str(home / "root-cache"), "YURT_LOCAL_CACHEDIR": str(home / "root-local")}
    r = subprocess.run([*yurt_argv(), "--debug", "exec", ref, "cat", "/marker"], capture_output=True, text=True,
                       cwd="/", timeout=300, env={**os.environ, **root_env})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "good"
    assert "image attached with kernel squashfs (loop device)" in r.stderr, r.stderr  # a loop device on the memfd
