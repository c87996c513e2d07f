"""The command lines Nextflow writes for Singularity/Apptainer (its SingularityBuilder and
SingularityCache; the ``nextflow`` launcher needs a download, so its lines are checked here): they parse
with yurt's option tables and mean what Nextflow expects."""

from __future__ import annotations

import shlex

from yurt.cli import actions, identity_of, pull
from yurt.cli.options import parse

# .command.run's launch line (Nextflow 23-24, `singularity.enabled`/`apptainer.enabled`, default runOptions),
# with `singularity.runOptions = '--cleanenv -B /ref:/ref:ro'` in the second.
EXEC_LINES = [
    'apptainer exec --no-home --pid -B /work/ab/12cd /cache/nf-img.sif /bin/bash -c "cd $NXF_TASK_WORKDIR; '
    'eval $(nxf_container_env); /bin/bash /work/ab/12cd/.command.run nxf_trace"',
    'singularity exec --no-home --pid --cleanenv -B /ref:/ref:ro -B /work/ab/12cd -B /scratch/tmp '
    '/cache/nf-img.sif /bin/bash -ue /work/ab/12cd/.command.sh',
]
PULL_LINE = "apptainer pull --name quay.io-biocontainers-samtools-1.17.img.pulling.1700000000 docker://quay.io/b/s:1.17"


def test_exec_lines_mean_what_nextflow_expects():
    first = shlex.split(EXEC_LINES[0])
    assert identity_of("/usr/bin/" + first[0]) == "apptainer" and first[1] == "exec"
    values, positionals = parse(first[2:], actions.FLAGS, stop_at_positional=True, environ={})
    assert values["no_home"] and values["pid"] and not values["cleanenv"]
    assert values["bind"] == ["/work/ab/12cd"]
    assert positionals[0] == "/cache/nf-img.sif" and positionals[1:3] == ["/bin/bash", "-c"]
    assert positionals[3].startswith("cd $NXF_TASK_WORKDIR;")  # handed to bash as it is (no --no-eval needed)

    second = shlex.split(EXEC_LINES[1])
    assert identity_of(second[0]) == "singularity"
    values, positionals = parse(second[2:], actions.FLAGS, stop_at_positional=True, environ={})
    assert values["no_home"] and values["pid"] and values["cleanenv"]
    assert values["bind"] == ["/ref:/ref:ro", "/work/ab/12cd", "/scratch/tmp"]
    assert positionals == ["/cache/nf-img.sif", "/bin/bash", "-ue", "/work/ab/12cd/.command.sh"]


def test_options_after_the_image_belong_to_the_command():
    values, positionals = parse(["--pid", "img.sif", "ls", "--no-home", "-B", "x"], actions.FLAGS,
                                stop_at_positional=True, environ={})
    assert values["pid"] and not values["no_home"] and positionals == ["img.sif", "ls", "--no-home", "-B", "x"]


def test_pull_line_names_the_file():
    argv = shlex.split(PULL_LINE)
    values, positionals = parse(argv[2:], pull.FLAGS, stop_at_positional=False, environ={})
    assert values["name"] == "quay.io-biocontainers-samtools-1.17.img.pulling.1700000000"
    assert positionals == ["docker://quay.io/b/s:1.17"] and not values["dir"]
    # NXF_SINGULARITY_CACHEDIR is Nextflow's; APPTAINER_PULLFOLDER/SINGULARITY_PULLFOLDER are Apptainer's --dir
    values, _ = parse(argv[2:], pull.FLAGS, stop_at_positional=False,
                      environ={"SINGULARITY_PULLFOLDER": "/cache", "YURT_NAME": "not-this"})
    assert values["dir"] == "/cache" and values["name"] == "quay.io-biocontainers-samtools-1.17.img.pulling.1700000000"
    values, _ = parse(["docker://x/y:1"], pull.FLAGS, stop_at_positional=False, environ={"YURT_NAME": "img"})
    assert values["name"] is None  # YURT_NAME is set inside every container: never a pull's --name
