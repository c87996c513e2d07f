"""cwltool 3.x from PyPI with ``--singularity``, on yurt linked as ``singularity``.

cwltool parses ``singularity --version``, probes ``singularity exec --userns``, pulls with ``singularity
pull --name PATH docker://REF`` into ``$CWL_SINGULARITY_CACHE``, recognises sandboxes with ``singularity
inspect --json``, builds ``dockerFile`` images through spython (``singularity build --fakeroot IMG
Dockerfile.def``) and ``dockerLoad`` tarballs with ``singularity build IMG docker-archive://FILE``, and
runs every tool as ``singularity --quiet run --contain --ipc --cleanenv --no-eval --userns|--pid --home
OUT:/HOME --mount type=bind,source=,target=[,readonly] ... --pwd /HOME --net --network none IMG ARGS``.
Each test runs a real CommandLineTool that way and checks its outputs.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from clients import ok, run

pytestmark = [pytest.mark.e2e, pytest.mark.userns, pytest.mark.requires("mksquashfs", "unsquashfs")]

if os.geteuid() == 0:
    pytest.skip("rootless tests run as the unprivileged test user", allow_module_level=True)

# Reads its input, tries to write to it (cwltool stages inputs read-only), reports where it ran.
TOOL = """\
cwlVersion: v1.2
class: CommandLineTool
requirements:
  DockerRequirement:
{requirement}
inputs:
  infile:
    type: File
    inputBinding: {{position: 1}}
baseCommand: [bash, -c]
arguments:
  - position: 0
    valueFrom: |
      cat /etc/clients-image "$0"
      if echo more >> "$0" 2>/dev/null; then echo input-writable; else echo input-readonly; fi
      echo "net: `ls /sys/class/net 2>/dev/null | tr '\\n' ' '`"
      cat /built.txt 2>/dev/null || true
      echo done > made.txt
stdout: out.txt
outputs:
  out:
    type: stdout
  made:
    type: File
    outputBinding: {{glob: made.txt}}
"""


def indent(text: str) -> str:
    return "".join(f"    {line}\n" for line in text.splitlines())


def cwltool(world, tmp_path: Path, requirement: str, *, env: dict[str, str] | None = None,
            expect_ok: bool = True) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run TOOL with ``requirement`` (the DockerRequirement's YAML body) under --singularity; return the
    run and the lines the tool printed."""
    tool = tmp_path / "tool.cwl"
    tool.write_text(TOOL.format(requirement=indent(requirement)))
    infile = tmp_path / "input.txt"
    infile.write_text("input data\n")
    (tmp_path / "job.json").write_text(json.dumps({"infile": {"class": "File", "path": str(infile)}}))
    outdir = tmp_path / "outdir"
    argv = [world.venv / "bin" / "cwltool", "--singularity", "--outdir", outdir, "--tmpdir-prefix",
            f"{tmp_path}/cwltmp/", tool, tmp_path / "job.json"]
    r = run(argv, world.env(tmp_path / "home", env), tmp_path, timeout=300)
    if not expect_ok:
        return r, []
    ok(r)
    # the output object is the last thing on stdout; spython copies a dockerFile build's own output
    # (stdout and stderr, Apptainer's INFO lines alike) to the same stdout before it
    start = 0 if r.stdout.startswith("{") else r.stdout.rindex("\n{") + 1
    result = json.loads(r.stdout[start:])
    lines = Path(result["out"]["path"]).read_text().splitlines()
    assert Path(result["made"]["path"]).read_text() == "done\n", result
    assert infile.read_text() == "input data\n", "the tool changed its input on the host"
    return r, lines


def check_ran(lines: list[str], built: str | None = None) -> None:
    assert lines[:3] == ["yurt-clients-image", "input data", "input-readonly"], lines
    # no NetworkAccess requirement: cwltool asks for --network none, and loopback is all there is
    assert lines[3].split() == ["net:", "lo"], lines
    if built:
        assert lines[4] == built, lines


def test_docker_pull(client_world, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    r, lines = cwltool(client_world, tmp_path, f"dockerPull: {client_world.ref}",
                       env={"CWL_SINGULARITY_CACHE": str(cache)})
    check_ran(lines)
    name = client_world.ref.replace("_", "___").replace("/", "_s_") + ".sif"
    assert (cache / name).is_file(), (sorted(os.listdir(cache)), r.stderr[-3000:])


def test_sif_by_image_id_in_cache(client_world, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    # what a site does for offline nodes: put the SIF into the cache under the name cwltool looks for
    (cache / "clients-bash:1.sif").write_bytes(client_world.sif.read_bytes())
    _, lines = cwltool(client_world, tmp_path, "dockerImageId: clients-bash:1",
                       env={"CWL_SINGULARITY_CACHE": str(cache)})
    check_ran(lines)
    assert sorted(os.listdir(cache)) == ["clients-bash:1.sif"], "nothing may be pulled"


def test_sandbox_directory(client_world, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    # a sandbox made as a user makes one, `apptainer build --sandbox DIR IMG.sif`: the tree is the user's
    # own, so pytest removes it with the rest of tmp_path
    env = client_world.env(tmp_path / "home")
    ok(run([client_world.bin_dir / "apptainer", "build", "--sandbox", images / "bash-sandbox", client_world.sif],
           env, tmp_path))
    _, lines = cwltool(client_world, tmp_path, "dockerPull: bash-sandbox",
                       env={"CWL_SINGULARITY_IMAGES": str(images)})
    check_ran(lines)


def test_docker_file(client_world, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    dockerfile = f"FROM {client_world.ref}\nRUN echo built-from-dockerfile > /built.txt\n"
    r, lines = cwltool(client_world, tmp_path, "dockerFile: |\n" + indent(dockerfile),
                       env={"CWL_SINGULARITY_CACHE": str(cache)})
    check_ran(lines, built="built-from-dockerfile")
    assert any(p.suffix == ".sif" for p in cache.iterdir()), (sorted(os.listdir(cache)), r.stderr[-3000:])


@pytest.mark.requires("skopeo")
def test_docker_load(client_world, tmp_path):
    archive = tmp_path / "bash-image.tar"
    env = client_world.env(tmp_path / "home", {"REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")})
    ok(run(["skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false",
            f"docker://{client_world.ref}", f"docker-archive:{archive}:clients/bash:1"], env, tmp_path))
    cache = tmp_path / "cache"
    cache.mkdir()
    _, lines = cwltool(client_world, tmp_path, f"dockerLoad: {archive}\ndockerImageId: clients/bash:1",
                       env={"CWL_SINGULARITY_CACHE": str(cache)})
    check_ran(lines)
