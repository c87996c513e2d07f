"""Definition file <-> Dockerfile conversion, checked by parsing the results back."""

from __future__ import annotations

import os
import subprocess

from installed_yurt import yurt_argv

from yurt.builder import convert, deffile, dockerfile
from yurt.builder.dockerfile_config import image_config
from yurt.builder.dockerfile_convert import to_deffile

DEF = """Bootstrap: docker
From: debian:bookworm
Stage: build

%files
    hello.c /src/hello.c

%environment
    export GREETING="hi there"
    export PATH=/opt/bin:$PATH

%post
    apt-get update
    if [ -d /src ]; then
        echo has src
    fi

%labels
    Author me

%runscript
    exec /opt/hello "$@"

%test
    /opt/hello
"""


def test_def_to_dockerfile_parses_and_keeps_meaning():
    text, warnings = convert.to_dockerfile(deffile.parse(DEF, filename="x.def"))
    stages = dockerfile.parse(text)
    assert stages[0].base == "debian:bookworm" and stages[0].name == "build"
    cmds = [i.cmd for i in stages[0].instructions]
    assert cmds == ["COPY", "ENV", "ENV", "RUN", "LABEL", "ENTRYPOINT"]
    config = image_config(stages[0])
    assert "GREETING=hi there" in config["Env"]
    assert "PATH=/opt/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in config["Env"]
    assert config["Entrypoint"][:2] == ["/bin/sh", "-c"] and "exec /opt/hello" in config["Entrypoint"][2]
    assert config["Labels"] == {"Author": "me"}
    # shell logic stays logic: the %post block runs as one script, `if` and all
    run = next(i for i in stages[0].instructions if i.cmd == "RUN")
    script = subprocess.run(["/bin/sh", "-c", run.args.replace("/tmp/yurt-post.sh", "/dev/stdout").split(" && ")[0]],
                            capture_output=True, text=True).stdout
    assert "if [ -d /src ]; then" in script and "    fi" in script
    assert any("%test" in w for w in warnings)  # no equivalent: reported, not dropped
    text, warnings = convert.to_dockerfile(deffile.parse(DEF.replace("export GREETING", "export X=$(date)\n"
                                                                     "    export GREETING"), filename="x.def"))
    assert any("X=$(date)" in w for w in warnings) and "# not converted (%environment)" in text


def test_dockerfile_to_def_round_trip(tmp_path):
    (tmp_path / "app.py").write_text("print(1)\n")
    df = "FROM python:3.11 AS base\nENV A=1\nCOPY app.py /app/\nRUN pip install x\nCMD [\"python\", \"/app/app.py\"]\n"
    text, _ = to_deffile(dockerfile.parse(df), context_dir=str(tmp_path))
    d = deffile.parse(text)[0]
    assert d.bootstrap == "docker" and d.source == "python:3.11"
    assert ("app.py", "/app/app.py") in d.files
    assert "pip install x" in d.post


def test_convert_cli_both_ways(tmp_path):
    src = tmp_path / "x.def"
    src.write_text(DEF)
    env = {"PATH": os.environ.get("PATH", "")}
    r = subprocess.run([*yurt_argv(), "convert", "-o", str(tmp_path / "Dockerfile"), str(src)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "yurt: warning:" in r.stderr
    r = subprocess.run([*yurt_argv(), "convert", str(tmp_path / "Dockerfile")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    back = deffile.parse(r.stdout)[0]
    assert back.source == "debian:bookworm"
