"""``yurt cache list`` / ``yurt cache clean`` as a user runs them (the installed ``yurt`` command in a subprocess)."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import subprocess
import time
from pathlib import Path

import pytest
from installed_yurt import yurt_argv

from yurt.store.cache import Store

DAY = 86400


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"YURT_CACHEDIR": str(tmp_path / "cache"), "YURT_LOCAL_CACHEDIR": str(tmp_path / "local"),
            "YURT_QUIET": None, "YURT_FORCE": None, "YURT_TYPE": None, "YURT_DAYS": None, "YURT_JSON": None,
            "YURT_DRY_RUN": None}


@pytest.fixture
def filled(env) -> dict[str, Path]:
    store = Store(env["YURT_CACHEDIR"], local_root=env["YURT_LOCAL_CACHEDIR"])
    with store.blob_writer(digest_of(b"layer")) as tmp:
        tmp.write_bytes(b"layer")
    with store.sif_writer(digest_of(b"manifest")) as tmp:
        tmp.write_bytes(b"S" * 3 * 1024 * 1024)
    store.set_ref("docker://alpine:3.19", digest_of(b"manifest"), {})
    tree = store.unpacked / ("f" * 32)
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "os-release").write_text("NAME=test\n")
    os.chmod(tree / "etc", 0o555)
    old = time.time() - 40 * DAY
    os.utime(store.blob_path(digest_of(b"layer")), (old, old))
    return {"blob": store.blob_path(digest_of(b"layer")), "sif": store.sif_path(digest_of(b"manifest")),
            "unpacked": tree, "ref": next(store.refs.iterdir())}


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"rc={result.returncode}\nstdout={result.stdout}\nstderr={result.stderr}"
    return result.stdout


def test_list_empty_cache_shows_location(yurt_cmd, env):
    out = ok(yurt_cmd("cache", "list", env=env))
    assert "No cached entries." in out
    assert f"cache: {env['YURT_CACHEDIR']}" in out
    assert "total         0 entries" in out


def test_list_table_totals_and_json(yurt_cmd, env, filled):
    out = ok(yurt_cmd("cache", "list", env=env))
    lines = out.splitlines()
    assert lines[0].split() == ["TYPE", "SIZE", "LAST", "USED", "NAME"]
    sif_line = next(line for line in lines if line.startswith("sif "))
    assert "3.0 MiB" in sif_line and digest_of(b"manifest") in sif_line and "(docker://alpine:3.19)" in sif_line
    blob_line = next(line for line in lines if line.startswith("blob ") and "sha256:" in line)
    assert "40 d ago" in blob_line and "5 B" in blob_line
    assert any(line.startswith("unpacked ") and "f" * 32 in line for line in lines)
    assert any(line.split()[:3] == ["sif", "1", "entry"] for line in lines)
    assert any(line.split()[:3] == ["total", "4", "entries"] for line in lines)
    assert f"cache: {env['YURT_CACHEDIR']}" in out

    data = json.loads(ok(yurt_cmd("cache", "list", "--json", "--type", "sif,unpacked", env=env)))
    assert data["cache_dir"] == env["YURT_CACHEDIR"]
    assert [e["kind"] for e in data["entries"]] == ["sif", "unpacked"]
    assert data["totals"]["sif"] == {"count": 1, "size": 3 * 1024 * 1024}
    assert set(data["totals"]) == {"sif", "unpacked"}


def test_clean_refuses_without_force_when_not_a_terminal(yurt_cmd, env, filled):
    result = yurt_cmd("cache", "clean", env=env)
    assert result.returncode == 255
    assert result.stderr.count("\n") == 1 and "yurt: error:" in result.stderr and "--force" in result.stderr
    assert all(p.exists() for p in filled.values())


def test_clean_dry_run_removes_nothing(yurt_cmd, env, filled):
    out = ok(yurt_cmd("cache", "clean", "--dry-run", env=env))
    assert out.count("would remove") == 4 and "would free" in out
    assert all(p.exists() for p in filled.values())


def test_clean_by_type_and_days(yurt_cmd, env, filled):
    out = ok(yurt_cmd("cache", "clean", "--force", "--days", "30", env=env))
    assert f"removed blob {digest_of(b'layer')}" in out
    assert not filled["blob"].exists() and filled["sif"].exists()
    out = ok(yurt_cmd("cache", "clean", "-f", "-T", "unpacked", env=env))
    assert "removed unpacked" in out and not filled["unpacked"].exists() and filled["sif"].exists()
    ok(yurt_cmd("cache", "clean", "--force", env=env))
    assert not filled["sif"].exists() and not filled["ref"].exists()
    assert "No cached entries." in ok(yurt_cmd("cache", "list", env=env))


def test_bad_usage(yurt_cmd, env):
    for args in (["cache"], ["cache", "frob"], ["cache", "list", "--type", "layers"],
                 ["cache", "clean", "--days", "x", "--force"], ["cache", "list", "extra"]):
        result = yurt_cmd(*args, env=env)
        assert result.returncode == 255 and result.stderr.startswith("yurt: error:"), args
    assert "list|clean" in ok(yurt_cmd("help", "cache", env=env))
    assert "--dry-run" in ok(yurt_cmd("cache", "clean", "--help", env=env))


@pytest.mark.parametrize("answer, removed", [("y", True), ("n", False), ("", False)])
def test_clean_asks_on_a_terminal(tmp_path, env, filled, answer, removed):
    master, slave = pty.openpty()
    try:
        os.write(master, answer.encode() + b"\n")
        full_env = {k: v for k, v in os.environ.items() if k not in env}
        full_env.update({k: v for k, v in env.items() if v is not None})
        result = subprocess.run([*yurt_argv(), "cache", "clean", "--type", "sif"], stdin=slave,
                                capture_output=True, text=True, env=full_env, timeout=60, check=False)
    finally:
        os.close(master)
        os.close(slave)
    assert result.returncode == 0, result.stderr
    assert "Remove 1 entry (3.0 MiB) from the cache? [y/N]" in result.stderr
    assert filled["sif"].exists() != removed
    assert filled["blob"].exists() and filled["unpacked"].exists()
