"""Snakemake 9 from PyPI with ``--software-deployment-method apptainer``, on yurt linked as ``apptainer``.

Snakemake checks ``apptainer --version``, pulls ``docker://`` containers with ``apptainer pull --name
HASH.simg`` into its ``--apptainer-prefix``, and runs each job as ``apptainer exec --home CWD ARGS IMG
bash -c CMD`` (clients.py says why the image carries bash).  These tests run real workflows: a
``docker://`` container from the test registry and a local ``.sif``, a ``shell:`` and a bash
``script:`` rule, a rule that fails (its status must reach Snakemake), and ``--apptainer-args`` with
``--cleanenv --bind DIR:/ro:ro --writable-tmpfs``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from clients import ok, run

pytestmark = [pytest.mark.e2e, pytest.mark.userns, pytest.mark.requires("mksquashfs", "unsquashfs")]

if os.geteuid() == 0:
    pytest.skip("rootless tests run as the unprivileged test user", allow_module_level=True)


def snakemake(world, workdir: Path, *args: str, extra_env: dict[str, str] | None = None):
    argv = [world.venv / "bin" / "snakemake", "--cores", "1", "--software-deployment-method", "apptainer",
            "--apptainer-prefix", str(workdir / "sif-cache"), "--nocolor", *args]
    return run(argv, world.env(workdir / "home", extra_env), workdir, timeout=300)


SCRIPT = """\
# the bash script: Snakemake's preamble gives it bash arrays of the job's input and output
echo "script in $(cat /etc/clients-image) with bash ${BASH_VERSINFO[0]}" > "${snakemake_output[0]}"
cat "${snakemake_input[0]}" >> "${snakemake_output[0]}"
echo "rule ${snakemake[rule]} threads ${snakemake[threads]}" >> "${snakemake_output[0]}"
"""


def test_docker_container_shell_and_script_rules(client_world, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "in.txt").write_text("input line\n")
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "job.sh").write_text(SCRIPT)
    (tmp_path / "Snakefile").write_text(f"""\
container: "docker://{client_world.ref}"

rule all:
    input: "out/shell.txt", "out/script.txt"

rule shell_rule:
    input: "data/in.txt"
    output: "out/shell.txt"
    shell: "cat /etc/clients-image > {{output}}; tr a-z A-Z < {{input}} >> {{output}}; id -u >> {{output}}"

rule script_rule:
    input: "data/in.txt"
    output: "out/script.txt"
    script: "scripts/job.sh"
""")
    r = ok(snakemake(client_world, tmp_path))
    shell_out = (tmp_path / "out" / "shell.txt").read_text().splitlines()
    assert shell_out == ["yurt-clients-image", "INPUT LINE", str(os.getuid())], shell_out
    script_out = (tmp_path / "out" / "script.txt").read_text().splitlines()
    assert script_out[0].startswith("script in yurt-clients-image with bash 5"), script_out
    assert script_out[1:] == ["input line", "rule script_rule threads 1"], script_out
    # pulled once, by `apptainer pull --name HASH.simg`, into the prefix Snakemake named
    pulled = list((tmp_path / "sif-cache").glob("*.simg"))
    assert len(pulled) == 1 and pulled[0].stat().st_size > 0, (pulled, r.stderr[-3000:])
    # a second run has nothing to do and pulls nothing
    r2 = ok(snakemake(client_world, tmp_path))
    assert "Nothing to be done" in r2.stdout + r2.stderr, r2.stderr[-3000:]


def test_local_sif_failing_rule_and_apptainer_args(client_world, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "ref.txt").write_text("reference data\n")
    (tmp_path / "Snakefile").write_text(f"""\
container: "{client_world.sif}"

rule all:
    input: "out/args.txt"

rule args_rule:
    output: "out/args.txt"
    shell:
        '''
        cat /ro/ref.txt > {{output}}
        if touch /ro/new 2>/dev/null; then echo ro-writable >> {{output}}; else echo ro-readonly >> {{output}}; fi
        echo tmpfs > /srv/rw/written && cat /srv/rw/written >> {{output}}
        echo "host-var=${{{{CLIENTS_HOST_VAR:-unset}}}}" >> {{output}}
        '''

rule fails:
    output: "out/never.txt"
    shell: "echo failing on purpose >&2; exit 7"
""")
    args = f"--cleanenv --bind {shared}:/ro:ro --writable-tmpfs"
    r = ok(snakemake(client_world, tmp_path, "--apptainer-args", args, extra_env={"CLIENTS_HOST_VAR": "leaked"}))
    lines = (tmp_path / "out" / "args.txt").read_text().splitlines()
    assert lines == ["reference data", "ro-readonly", "tmpfs", "host-var=unset"], (lines, r.stderr[-3000:])
    assert not (shared / "new").exists()
    assert not list((tmp_path / "sif-cache").glob("*.simg")), "a local .sif must not be pulled"

    failed = snakemake(client_world, tmp_path, "out/never.txt")
    assert failed.returncode != 0, failed.stdout + failed.stderr
    log = failed.stdout + failed.stderr
    assert "failing on purpose" in log and "exit status 7" in log, log[-4000:]
    assert not (tmp_path / "out" / "never.txt").exists()
