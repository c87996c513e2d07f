"""The per-step build cache, for real: unchanged recipes run nothing, a changed step reruns from there.

Each test has its own ``YURT_CACHEDIR``.  ``%setup`` runs on the host, so it counts its own
runs in a host file: that is how a test sees whether a step really ran.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.userns, pytest.mark.requires("mksquashfs", "unsquashfs", "tar")]

if os.geteuid() == 0:
    pytest.skip("rootless tests run as the unprivileged test user", allow_module_level=True)

RECIPE = """\
Bootstrap: busybox

%setup
    echo setup >> {counter}

%files
    data /opt/data

%post
    echo post-ran
    echo made > /opt/made
    rm /bin/vi
    echo changed > /etc/group.extra
    mkdir -p /var/lib/gone && touch /var/lib/gone/x && rm -r /var/lib/gone
    touch /secret && chmod 000 /secret && mkdir /locked && touch /locked/in && chmod 000 /locked

%runscript
    echo {word}; cat /opt/data/in.txt
"""


def _ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, f"rc={r.returncode}\nstdout={r.stdout}\nstderr={r.stderr}"
    return r


@pytest.fixture(params=["single", "subuid"])
def env(request, tmp_path) -> dict[str, str | None]:
    from tests.integration.test_build import has_subuid

    if request.param == "subuid" and not has_subuid():
        pytest.skip("no /etc/subuid range for this user")
    return {"YURT_CACHEDIR": str(tmp_path / "cache"),
            "YURT_BUILD_IGNORE_SUBUID": "1" if request.param == "single" else None}


def _setup(tmp_path: Path, word: str = "hello") -> tuple[Path, Path]:
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "in.txt").write_text("input one\n")
    counter = tmp_path / "setup-runs"
    recipe = tmp_path / "img.def"
    recipe.write_text(RECIPE.format(counter=counter, word=word))
    return recipe, counter


def _runs(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def test_unchanged_recipe_runs_nothing_and_gives_the_same_sif(yurt_cmd, tmp_path, env):
    recipe, counter = _setup(tmp_path)
    first = _ok(yurt_cmd("build", tmp_path / "a.sif", recipe, env=env, timeout=300))
    assert "post-ran" in first.stdout + first.stderr
    assert _runs(counter) == 1
    t0 = time.monotonic()
    second = _ok(yurt_cmd("build", tmp_path / "b.sif", recipe, env=env, timeout=300))
    elapsed = time.monotonic() - t0
    assert _runs(counter) == 1, "%setup ran again for an unchanged recipe"
    assert "post-ran" not in second.stdout + second.stderr
    assert "the SIF is cached" in second.stderr
    assert (tmp_path / "a.sif").read_bytes() == (tmp_path / "b.sif").read_bytes()
    assert elapsed < 10, f"a fully cached rebuild took {elapsed:.1f} s"
    out = _ok(yurt_cmd("run", tmp_path / "b.sif", env=env)).stdout
    assert out.split("\n")[:2] == ["hello", "input one"]


def test_changed_late_step_reruns_only_from_there(yurt_cmd, tmp_path, env):
    recipe, counter = _setup(tmp_path)
    _ok(yurt_cmd("build", tmp_path / "a.sif", recipe, env=env, timeout=300))
    recipe.write_text(RECIPE.format(counter=counter, word="changed-runscript"))
    r = _ok(yurt_cmd("build", tmp_path / "b.sif", recipe, env=env, timeout=300))
    assert _runs(counter) == 1 and "post-ran" not in r.stdout + r.stderr
    assert "%post: cached" in r.stderr and "restoring the cached steps" in r.stderr
    assert "warning" not in r.stderr  # mode-000 files and directories are recorded and restored too
    # The tree restored from the cached layers is what %post left: additions, changes and removals.
    script = ("cat /opt/made /etc/group.extra; test ! -e /bin/vi && echo vi-gone; test ! -e /var/lib/gone && "
              "echo dir-gone; test -x /bin/sh && echo sh-ok; /.singularity.d/runscript")
    out = _ok(yurt_cmd("exec", tmp_path / "b.sif", "/bin/sh", "-c", script, env=env)).stdout.split()
    assert out == ["made", "changed", "vi-gone", "dir-gone", "sh-ok", "changed-runscript", "input", "one"]


def test_changed_input_file_reruns_the_copy_and_what_follows(yurt_cmd, tmp_path, env):
    recipe, counter = _setup(tmp_path)
    _ok(yurt_cmd("build", tmp_path / "a.sif", recipe, env=env, timeout=300))
    (tmp_path / "data" / "in.txt").write_text("input two\n")
    r = _ok(yurt_cmd("build", tmp_path / "b.sif", recipe, env=env, timeout=300))
    assert _runs(counter) == 2 and "post-ran" in r.stdout + r.stderr
    assert "bootstrap busybox: cached" in r.stderr
    assert _ok(yurt_cmd("run", tmp_path / "b.sif", env=env)).stdout.split("\n")[1] == "input two"


def test_no_cache_runs_every_step_and_cache_clean_removes_build_entries(yurt_cmd, tmp_path, env):
    recipe, counter = _setup(tmp_path)
    _ok(yurt_cmd("build", tmp_path / "a.sif", recipe, env=env, timeout=300))
    r = _ok(yurt_cmd("build", "--no-cache", tmp_path / "b.sif", recipe, env=env, timeout=300))
    assert _runs(counter) == 2 and "cached" not in r.stderr
    listing = _ok(yurt_cmd("cache", "list", "--type", "build", env=env)).stdout
    assert listing.count("build") >= 4, listing
    _ok(yurt_cmd("cache", "clean", "--type", "build", "--force", env=env))
    assert not any((tmp_path / "cache" / "build").iterdir())
    r = _ok(yurt_cmd("build", tmp_path / "c.sif", recipe, env=env, timeout=300))
    assert _runs(counter) == 3 and "cached" not in r.stderr


def test_interrupted_step_leaves_no_cache_entry(yurt_cmd, tmp_path, env):
    recipe, counter = _setup(tmp_path)
    recipe.write_text(recipe.read_text().replace("echo post-ran", "echo post-ran; exit 3"))
    r = yurt_cmd("build", tmp_path / "a.sif", recipe, env=env, timeout=300)
    assert r.returncode != 0 and "%post failed" in r.stderr
    assert not (tmp_path / "a.sif").exists()
    r = yurt_cmd("build", tmp_path / "a.sif", recipe, env=env, timeout=300)
    assert r.returncode != 0 and "%post: cached" not in r.stderr and "post-ran" in r.stdout + r.stderr
