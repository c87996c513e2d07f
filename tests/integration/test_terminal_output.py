"""What ``cache list`` and ``inspect`` print on a terminal (rich tables and colour) and off one (plain lines).

Each command runs on a real pseudo-terminal (:func:`installed_yurt.yurt_on_terminal`), as a user at a
terminal runs it; the plain output that scripts parse is checked unchanged by test_cache_cli.py and
the inspect tests, and here byte for byte against the same command on a pipe.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from installed_yurt import yurt_on_terminal

from yurt.store.cache import Store

SGR = re.compile(r"\x1b\[([0-9;]*)m")
RULE = "\u2500"  # the box-drawing line under a rich table's header


def colours(text: str) -> list[str]:
    """The SGR sequences in ``text`` that set a colour (not bold, dim or reset)."""
    found = []
    for params in SGR.findall(text):
        codes = params.split(";")
        if any(c in ("38", "48") or (len(c) == 2 and c[0] in "349" and c[1] != "9") for c in codes):
            found.append(params)
    return found


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str | None]:
    env = {"YURT_CACHEDIR": str(tmp_path / "cache"), "YURT_LOCAL_CACHEDIR": str(tmp_path / "local"),
           "YURT_QUIET": None, "YURT_TYPE": None, "YURT_JSON": None}
    store = Store(env["YURT_CACHEDIR"], local_root=env["YURT_LOCAL_CACHEDIR"])
    with store.blob_writer(digest_of(b"layer")) as tmp:
        tmp.write_bytes(b"layer")
    with store.sif_writer(digest_of(b"manifest")) as tmp:
        tmp.write_bytes(b"S" * 3 * 1024 * 1024)
    store.set_ref("docker://alpine:3.19", digest_of(b"manifest"), {})
    return env


@pytest.fixture
def hostile_image(tmp_path: Path) -> Path:
    """A sandbox whose labels carry escape sequences (a red colour, a cursor move)."""
    image = tmp_path / "image"
    (image / ".singularity.d").mkdir(parents=True)
    (image / ".singularity.d" / "labels.json").write_text(
        json.dumps({"org.example.evil": "\x1b[31mred\x1b[0m\x1b[2Aup", "org.example.ok": "fine"}))
    return image


def test_cache_list_on_a_terminal_is_a_table(env):
    status, out = yurt_on_terminal("cache", "list", env=env)
    assert status == 0, out
    plain = SGR.sub("", out)
    assert RULE * 10 in plain  # rich drew a table
    assert re.search(r"TYPE\s+SIZE\s+LAST USED\s+NAME", plain) and re.search(r"TYPE\s+ENTRIES\s+SIZE", plain)
    assert digest_of(b"manifest") in plain and "(docker://alpine:3.19)" in plain and "3.0 MiB" in plain
    assert re.search(r"total\s+3\s+3\.0 MiB", plain)
    assert f"cache: {env['YURT_CACHEDIR']}" in plain
    assert colours(out), "no colour on a terminal"


def test_no_color_keeps_the_table_and_drops_the_colour(env):
    status, out = yurt_on_terminal("cache", "list", env={**env, "NO_COLOR": "1"})
    assert status == 0, out
    assert RULE * 10 in out and digest_of(b"manifest") in out
    assert colours(out) == [], out


def test_dumb_terminal_gets_the_plain_lines(yurt_cmd, env):
    status, out = yurt_on_terminal("cache", "list", env={**env, "TERM": "dumb"})
    assert status == 0 and "\x1b" not in out and RULE not in out
    assert out.splitlines()[0].split() == ["TYPE", "SIZE", "LAST", "USED", "NAME"]


def test_json_is_the_same_on_a_terminal(yurt_cmd, env, hostile_image):
    for args in (["cache", "list", "--json"], ["inspect", "--json", str(hostile_image)],
                 ["inspect", "--json", "--labels", str(hostile_image)]):
        piped = yurt_cmd(*args, env=env)
        assert piped.returncode == 0, piped.stderr
        status, out = yurt_on_terminal(*args, env=env)
        assert status == 0 and out == piped.stdout, args


def test_inspect_sections_stay_plain_on_a_terminal(yurt_cmd, env, hostile_image):
    """``inspect --labels`` (or any section) is for reading a value: the same text on a terminal."""
    piped = yurt_cmd("inspect", "--labels", hostile_image, env=env)
    status, out = yurt_on_terminal("inspect", "--labels", hostile_image, env=env)
    assert status == 0 and out == piped.stdout


def test_inspect_on_a_terminal_shows_tables_and_escapes_hostile_text(busybox_rootfs, hostile_image, env):
    status, out = yurt_on_terminal("inspect", busybox_rootfs, env=env)
    assert status == 0, out
    plain = SGR.sub("", out)
    assert re.search(r"Image\s+\S+ \(sandbox, \d+ bytes\)", plain) and RULE * 10 in plain
    assert re.search(r"LABEL\s+VALUE", plain) and "Runscript" in plain and colours(out)

    status, out = yurt_on_terminal("inspect", hostile_image, env=env)
    assert status == 0, out
    assert "\\x1b[31mred\\x1b[0m\\x1b[2Aup" in out  # shown, not obeyed
    assert "\x1b[31mred" not in out and "\x1b[2A" not in out


def test_exec_on_a_terminal_does_not_load_rich(busybox_rootfs, tmp_path):
    """The exec path stays without rich even where its output is a terminal."""
    status, out = yurt_on_terminal("exec", busybox_rootfs, "echo", "hello",
                                   env={"PYTHONPROFILEIMPORTTIME": "1", "PYTHONDONTWRITEBYTECODE": "1"})
    assert status == 0 and "hello" in out, out
    imported = [line.rsplit("|", 1)[-1].strip() for line in out.splitlines() if line.startswith("import time:")]
    assert "yurt.cli.actions" in imported
    assert not [m for m in imported if m.split(".")[0] in ("rich", "httpx")], imported
