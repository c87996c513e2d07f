"""Dockerfile parsing, image configs, .dockerignore, COPY sources and conversion to definition files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yurt.builder import dockerfile, dockerfile_args, dockerfile_config, dockerfile_context, dockerfile_convert
from yurt.builder import dockerfile_lexer as lexer
from yurt.builder.dockerfile import DEFAULT_PATH, Instruction, Stage, parse
from yurt.builder.dockerfile_config import image_config
from yurt.builder.dockerfile_context import Matcher, copy_sources, load_dockerignore, parse_dockerignore
from yurt.builder.dockerfile_convert import to_deffile
from yurt.errors import BuildError

CORPUS = Path(__file__).parent / "corpus" / "dockerfiles"
ARM = {"TARGETPLATFORM": "linux/arm64"}


def corpus(name: str, **kwargs) -> list[Stage]:
    path = CORPUS / name
    return parse(path.read_text(), filename=str(path), **kwargs)


def only(text: str, **kwargs) -> Stage:
    stages = parse(text, **kwargs)
    assert len(stages) == 1
    return stages[0]


def find(stage: Stage, cmd: str, n: int = 0) -> Instruction:
    return [ins for ins in stage.instructions if ins.cmd == cmd][n]


def env_of(config: dict) -> dict[str, str]:
    return dict(item.split("=", 1) for item in config["Env"])


def errors(text: str, **kwargs) -> str:
    with pytest.raises(BuildError) as info:
        parse(text, **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------------------------------------------------
# The corpus


def test_corpus_files_all_parse_and_convert():
    names = sorted(p.name for p in CORPUS.glob("*.Dockerfile"))
    assert len(names) >= 8
    for name in names:
        stages = corpus(name, build_args=ARM)
        for stage in stages:
            assert image_config(stage)["Env"]
        text, _ = to_deffile(stages)
        assert text.count("Bootstrap:") == len(stages), name


def test_corpus_c_multistage():
    build, final = corpus("c-multistage.Dockerfile")
    assert (build.index, build.name, build.base, build.line) == (0, "build", "gcc:13", 7)
    assert (final.index, final.name, final.base) == (1, None, "debian:bookworm-slim")
    assert [i.cmd for i in build.instructions] == ["WORKDIR", "COPY", "COPY", "RUN"]
    assert find(build, "COPY", 1).words == ["src/", "./src/"]
    run = find(build, "RUN")
    assert run.line == 11 and run.json_form is None
    assert run.args == 'make -j"$(nproc)" CFLAGS="-O2 -Wall"     && strip hello     && ./hello --version'
    copy = find(final, "COPY")
    assert copy.flags == {"from": "build"} and copy.from_stage == 0
    assert copy.words == ["/src/hello", "/usr/local/bin/hello"]
    config = image_config(final)
    assert config["Entrypoint"] == ["/usr/local/bin/hello"]
    assert config["Cmd"] == ["--greeting", "world"]
    assert config["Labels"] == {"org.opencontainers.image.title": "hello",
                                "org.opencontainers.image.licenses": "BSD-3-Clause"}  # fmt: skip
    # a build arg changes the FROM lines
    assert corpus("c-multistage.Dockerfile", build_args={"GCC_VERSION": "14"})[0].base == "gcc:14"


def test_corpus_python_pip():
    (stage,) = corpus("python-pip.Dockerfile")
    assert stage.base == "python:3.12-slim" and stage.name == "base"
    assert find(stage, "ENV", 0).pairs == [("PYTHONDONTWRITEBYTECODE", "1"), ("PYTHONUNBUFFERED", "1")]
    assert find(stage, "ENV", 1).pairs == [("PIP_NO_CACHE_DIR", "off")]  # the legacy `ENV K V` form
    adduser = find(stage, "RUN", 0)
    assert adduser.line == 12 and '--uid "${UID}"' in adduser.args  # RUN is not substituted
    assert adduser.build_args == {"UID": "10001"}
    pip = find(stage, "RUN", 1)
    assert pip.flags == {"mount": ["type=cache,target=/root/.cache/pip",
                                   "type=bind,source=requirements.txt,target=requirements.txt"]}  # fmt: skip
    assert pip.args == "python -m pip install -r requirements.txt"
    assert find(stage, "COPY").flags == {"chown": "appuser:appuser"}
    config = image_config(stage)
    assert config["User"] == "appuser" and config["WorkingDir"] == "/app"
    assert config["ExposedPorts"] == {"8000/tcp": {}}
    assert config["Cmd"] == ["/bin/sh", "-c", "gunicorn 'app:create_app()' --bind=0.0.0.0:8000"]
    assert config["Healthcheck"] == {
        "Test": ["CMD-SHELL", "curl -f http://localhost:8000/health || exit 1"],
        "Interval": 30 * 10**9, "Timeout": 3 * 10**9, "StartPeriod": 5 * 10**9, "Retries": 3,
    }  # fmt: skip
    assert env_of(config) == {"PATH": DEFAULT_PATH, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
                              "PIP_NO_CACHE_DIR": "off"}  # fmt: skip
    assert corpus("python-pip.Dockerfile", build_args={"UID": "2000"})[0].instructions[4].build_args == {"UID": "2000"}


def test_corpus_windows_escape_directive():
    (stage,) = corpus("windows-escape.Dockerfile")
    assert find(stage, "SHELL").json_form == ["powershell", "-Command", "$ErrorActionPreference = 'Stop';"]
    # the backtick continues lines; backslashes are plain characters
    assert find(stage, "ENV").pairs == [("TOOLS", "C:\\tools"), ("DATA", "C:\\Program Files\\data")]
    assert find(stage, "COPY").words == ["testfile.txt", "c:\\"]
    assert find(stage, "WORKDIR").words == ["C:\\app"]
    run = find(stage, "RUN")
    assert run.line == 9
    assert run.args.startswith("New-Item -ItemType Directory -Force -Path $env:TOOLS ;     Write-Host")
    assert run.args.endswith("Write-Host 'backslash \\ stays literal'")
    config = image_config(stage)
    assert config["Cmd"] == ["cmd", "/S", "/C", "dir c:\\"]
    assert config["Shell"] == ["powershell", "-Command", "$ErrorActionPreference = 'Stop';"]


def test_corpus_node_app_stages_from_stages():
    base, deps, build, runner = corpus("node-app.Dockerfile")
    assert [s.name for s in (base, deps, build, runner)] == ["base", "deps", "build", "runner"]
    assert [s.base_stage for s in (base, deps, build, runner)] == [None, 0, 0, 0]
    assert find(base, "ENV").pairs == [("NODE_ENV", "production")]
    assert find(deps, "COPY").words == ["package.json", "package-lock.json*", "./"]
    assert find(build, "COPY", 0).from_stage == 1
    assert find(runner, "COPY", 0).flags == {"from": "build", "chown": "node:node"}
    assert find(runner, "COPY", 0).from_stage == 2
    # ENV of this stage is substituted in EXPOSE
    assert find(runner, "EXPOSE").words == ["3000"]
    # a stage's config builds on its base stage's config
    config = image_config(runner, image_config(base))
    assert config["WorkingDir"] == "/usr/src/app"
    assert env_of(config)["NODE_ENV"] == "production" and env_of(config)["HOSTNAME"] == "0.0.0.0"
    assert config["StopSignal"] == "SIGTERM" and config["User"] == "node"
    assert config["Cmd"] == ["node", "dist/server.js"]


def test_corpus_go_static_platform_args():
    build, final = corpus("go-static.Dockerfile", build_args=ARM)
    assert build.platform == dockerfile_args._host_platform()
    assert find(build, "ARG", 0).build_args == {"TARGETOS": "linux"}
    assert find(build, "RUN", 1).build_args == {"TARGETOS": "linux", "TARGETARCH": "arm64"}
    assert find(build, "COPY", 1).words == ["*.go", "./"]
    assert final.base == "scratch"
    assert [i.from_stage for i in final.instructions if i.cmd == "COPY"] == [0, 0]
    config = image_config(final)
    assert config["Entrypoint"] == ["/server"] and config["Cmd"] is None
    assert config["User"] == "65534:65534"
    assert config["Env"] == [f"PATH={DEFAULT_PATH}"]


def test_corpus_nginx_static():
    (stage,) = corpus("nginx-static.Dockerfile")
    assert find(stage, "LABEL").pairs == [("maintainer", "Ops Team <ops@example.org>"), ("version", "1.4.2"),
                                          ("description", "static site behind nginx")]  # fmt: skip
    # a comment line inside the continued RUN is dropped
    run = find(stage, "RUN")
    assert "clean up" not in run.args and run.args.endswith("&& rm -rf /var/lib/apt/lists/*")
    assert find(stage, "ADD", 0).words == ["https://example.org/downloads/site-1.25.4.tar.gz", "/tmp/site.tar.gz"]
    assert find(stage, "ADD", 1).words == ["assets.tar.gz", "/usr/share/nginx/html/"]
    copy = find(stage, "COPY")
    assert copy.json_form == ["public/index.html", "${SITE_ROOT}/"]
    assert copy.words == ["public/index.html", "/usr/share/nginx/html/"]
    assert find(stage, "ONBUILD", 0).words == ["COPY site/ ${SITE_ROOT}/"]  # ONBUILD is not substituted
    config = image_config(stage)
    assert config["Volumes"] == {"/var/cache/nginx": {}, "/var/log/nginx": {}}
    assert config["ExposedPorts"] == {"80/tcp": {}, "443/tcp": {}}
    assert config["StopSignal"] == "SIGQUIT"
    assert config["Healthcheck"] == {"Test": ["NONE"]}
    assert config["OnBuild"] == ["COPY site/ ${SITE_ROOT}/", "RUN nginx -t"]
    # shell-form ENTRYPOINT goes through SHELL
    assert config["Entrypoint"] == ["/bin/bash", "-o", "pipefail", "-c", "nginx -g 'daemon off;'"]
    assert config["Cmd"] is None


def test_corpus_hpc_mpi_arg_scopes():
    mpi, app, final = corpus("hpc-mpi.Dockerfile")
    assert mpi.base == final.base == "rockylinux:9"
    assert app.base_stage == 0
    assert find(mpi, "ENV", 1).pairs == [
        ("PATH", f"/opt/ompi/bin:{DEFAULT_PATH}"),
        ("LD_LIBRARY_PATH", "/opt/ompi/lib:"),
    ]
    assert find(mpi, "RUN", 1).build_args == {"OMPI_VERSION": "4.1.6"}
    assert "${OMPI_VERSION%.*}" in find(mpi, "RUN", 1).args
    # app starts from mpi: its ARG and ENV carry over
    assert find(app, "RUN").build_args == {"OMPI_VERSION": "4.1.6"}
    assert image_config(app, image_config(mpi))["WorkingDir"] == "/tmp/build/src"
    # the final stage never declared OMPI_VERSION nor BASE_IMAGE
    assert find(final, "LABEL").pairs == [("org.example.mpi.version", "unknown"), ("org.example.base", "")]
    assert [(i.flags["from"], i.from_stage) for i in final.instructions if i.cmd == "COPY"] == [("0", 0), ("app", 1)]
    assert image_config(final)["Cmd"] == ["mpirun", "-n", "2", "ring"]
    stages = corpus("hpc-mpi.Dockerfile", build_args={"BASE_IMAGE": "almalinux:9", "OMPI_VERSION": "5.0.3"})
    assert [s.base for s in stages] == ["almalinux:9", "mpi", "almalinux:9"]
    assert find(stages[0], "ARG").build_args == {"OMPI_VERSION": "5.0.3"}


def test_corpus_onbuild_base():
    (stage,) = corpus("onbuild-base.Dockerfile")
    assert find(stage, "MAINTAINER").words == ["Jane Doe <jane@example.org>"]
    config = image_config(stage)
    assert config["OnBuild"] == [
        "COPY requirements.txt /usr/src/app/",
        "RUN pip install --no-cache-dir -r requirements.txt",
        "COPY . /usr/src/app",
    ]
    assert (config["Entrypoint"], config["Cmd"]) == (["python"], ["app.py"])
    # triggers are not inherited by the next image
    child = only('FROM onbuild-base\nCMD ["main.py"]\n')
    assert "OnBuild" not in image_config(child, config)


# --------------------------------------------------------------------------------------------------------------------
# Lines, comments, directives


def test_comments_continuations_and_blank_continuation_lines():
    stage = only(
        "FROM alpine\n"
        "  # an indented comment\n"
        "RUN echo a \\\n"
        "# a comment inside the instruction\n"
        "\n"
        "   \n"
        "    b # not a comment\n"
        "run echo lower-case\n"
        "RUN echo end \\"
    )
    assert [(i.cmd, i.line, i.args) for i in stage.instructions] == [
        ("RUN", 3, "echo a     b # not a comment"),
        ("RUN", 8, "echo lower-case"),
        ("RUN", 9, "echo end"),
    ]


def test_crlf_and_bom():
    stage = only("\ufeffFROM alpine\r\nRUN echo a \\\r\n  b\r\n")
    assert stage.instructions[0].args == "echo a   b"


def test_escape_directive_backtick():
    stage = only("# escape=`\nFROM alpine\nRUN echo a `\n    b\nENV P=C:\\dir Q=`$HOME\n")
    assert stage.instructions[0].args == "echo a     b"
    assert stage.instructions[1].pairs == [("P", "C:\\dir"), ("Q", "$HOME")]


@pytest.mark.parametrize(
    ("head", "continued"),
    [
        ("#escape=`", True),
        ("# ESCAPE = `", True),
        ("# syntax=docker/dockerfile:1\n# escape=`", True),
        ("# a comment\n# escape=`", False),  # after a comment: a comment
        ("\n# escape=`", False),  # after a blank line: a comment
        ("# unknown=x\n# escape=`", False),  # an unknown directive ends the directives
        ("# escape=` \\", False),  # not a directive (the value is not ` or \): see below
    ],
)
def test_directives_only_at_the_top(head, continued):
    text = f"{head}\nFROM alpine\nRUN echo a `\nRUN echo b\n"
    if head.endswith("\\"):
        assert "invalid escape token" in errors(text)
        return
    stage = only(text)
    assert len(stage.instructions) == (1 if continued else 2)


def test_directive_errors():
    assert errors("# escape=`\n# escape=\\\nFROM a\n").startswith("Dockerfile:2: only one escape parser directive")
    assert errors("# escape=x\nFROM a\n", filename="Containerfile").startswith("Containerfile:1: invalid escape token")


# --------------------------------------------------------------------------------------------------------------------
# Exec and shell forms


@pytest.mark.parametrize(
    ("args", "json_form"),
    [
        ('["/bin/echo", "hi there"]', ["/bin/echo", "hi there"]),
        ('  [ "a" ,"b" ]', ["a", "b"]),
        ('["a\\"q", "\\u00e9"]', ['a"q', "é"]),
        ("[]", []),
        ("['single', 'quotes']", None),  # not JSON: shell form
        ('["a", 1]', None),  # not all strings
        ('["a"] trailing', None),
        ('["unterminated"', None),
        ("echo [not json]", None),
    ],
)
def test_exec_or_shell_form(args, json_form):
    ins = find(only(f"FROM a\nCMD {args}\n"), "CMD")
    assert ins.json_form == json_form
    config = image_config(only(f"FROM a\nCMD {args}\n"))
    assert config["Cmd"] == (json_form if json_form is not None else ["/bin/sh", "-c", args.strip()])


@pytest.mark.parametrize("cmd", ["CMD", "ENTRYPOINT", "RUN", "SHELL"])
def test_nul_in_exec_form_is_a_line_error(cmd):
    with pytest.raises(BuildError, match=r":2: .*NUL character"):
        only(f'FROM a\n{cmd} ["/bin/echo", "a\\u0000b"]\n')


def test_shell_instruction_changes_shell_form():
    stage = only('FROM a\nCMD one\nSHELL ["/bin/bash", "-eo", "pipefail", "-c"]\nENTRYPOINT two\n')
    config = image_config(stage)
    assert config["Cmd"] == ["/bin/sh", "-c", "one"]
    assert config["Entrypoint"] == ["/bin/bash", "-eo", "pipefail", "-c", "two"]
    assert config["Shell"] == ["/bin/bash", "-eo", "pipefail", "-c"]
    # the base image's SHELL applies too
    assert image_config(only("FROM a\nCMD x\n"), {"Shell": ["zsh", "-c"]})["Cmd"] == ["zsh", "-c", "x"]


def test_run_exec_and_shell_not_substituted():
    stage = only('FROM a\nENV X=1\nRUN echo $X "${X:-y}"\nRUN ["echo", "$X"]\n')
    assert stage.instructions[1].args == 'echo $X "${X:-y}"'
    assert stage.instructions[2].json_form == ["echo", "$X"]


# --------------------------------------------------------------------------------------------------------------------
# ARG scope and substitution


def test_global_arg_only_in_from_unless_redeclared():
    stages = parse(
        "ARG VERSION=1.36\nARG IMG=busybox\n"
        "FROM ${IMG}:$VERSION AS one\nLABEL v=${VERSION:-none}\n"
        "FROM $IMG AS two\nARG VERSION\nLABEL v=$VERSION\n"
        "FROM alpine AS three\nARG VERSION=local\nLABEL v=$VERSION\n"
    )
    assert [s.base for s in stages] == ["busybox:1.36", "busybox", "alpine"]
    assert [find(s, "LABEL").pairs for s in stages] == [[("v", "none")], [("v", "1.36")], [("v", "local")]]


def test_build_args_override_defaults_and_need_a_declaration():
    text = "ARG V=1\nFROM a:$V\nARG V\nARG W=2\nLABEL v=$V w=$W u=${UNDECLARED:-unset}\n"
    stage = only(text, build_args={"V": "9", "W": "8", "UNDECLARED": "x"})
    assert stage.base == "a:9"
    assert find(stage, "LABEL").pairs == [("v", "9"), ("w", "8"), ("u", "unset")]
    assert find(stage, "LABEL").build_args == {"V": "9", "W": "8"}


def test_arg_scope_ends_with_the_stage_and_env_wins():
    stages = parse("FROM a AS one\nARG X=arg\nENV Y=$X\nENV X=env\nLABEL x=$X\nFROM b\nLABEL x=${X:-gone}\n")
    one, two = stages
    assert find(one, "ENV", 0).pairs == [("Y", "arg")]
    assert find(one, "LABEL").pairs == [("x", "env")]
    assert find(two, "LABEL").pairs == [("x", "gone")]


def test_arg_without_value_is_unset_and_args_see_earlier_args():
    stage = only("FROM a\nARG A\nARG B=${A-unset}\nARG C=$B-c D=${C:-old}\nLABEL b=$B c=$C d=$D\n")
    assert find(stage, "LABEL").pairs == [("b", "unset"), ("c", "unset-c"), ("d", "old")]
    assert find(stage, "ARG", 2).pairs == [("C", "unset-c"), ("D", "old")]


def test_stage_from_stage_inherits_env_and_args():
    one, two = parse("FROM a AS one\nARG X=1\nENV E=e\nFROM one\nLABEL x=$X e=$E\n")
    assert two.base_stage == 0
    assert find(two, "LABEL").pairs == [("x", "1"), ("e", "e")]


def test_predefined_proxy_args_reach_run():
    stage = only("FROM a\nRUN true\n", build_args={"https_proxy": "http://proxy:3128", "OTHER": "x"})
    assert stage.instructions[0].build_args == {"https_proxy": "http://proxy:3128"}


def test_automatic_platform_args():
    stages = parse(
        "FROM --platform=$BUILDPLATFORM a AS b\nARG TARGETARCH\nLABEL t=$TARGETARCH b=${BUILDARCH:-undeclared}\n"
        "FROM --platform=${TARGETPLATFORM} c\n",
        build_args={"TARGETPLATFORM": "linux/arm/v7"},
    )
    assert stages[0].platform == dockerfile_args._host_platform()
    assert stages[1].platform == "linux/arm/v7"
    assert find(stages[0], "LABEL").pairs == [("t", "arm"), ("b", "undeclared")]


def test_base_env_callback_is_used_for_substitution():
    seen = []

    def base_env(image, platform):
        seen.append((image, platform))
        return ["PATH=/usr/local/go/bin:/usr/bin", "GOPATH=/go"] if image.startswith("golang") else None

    one, two = parse("FROM golang:1.22\nENV PATH=$GOPATH/bin:$PATH\nFROM scratch\nLABEL p=$PATH\n", base_env=base_env)
    assert find(one, "ENV").pairs == [("PATH", "/go/bin:/usr/local/go/bin:/usr/bin")]
    assert find(two, "LABEL").pairs == [("p", DEFAULT_PATH)]
    assert seen == [("golang:1.22", None)]  # never asked about scratch


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("$A", "a"),
        ("${A}_x", "a_x"),
        ("$A_x", ""),  # the name is A_x
        ("$UNSET", ""),
        ("${UNSET:-default}", "default"),
        ("${EMPTY:-default}", "default"),
        ("${EMPTY-default}", ""),
        ("${UNSET-default}", "default"),
        ("${A:-default}", "a"),
        ("${A:+alt}", "alt"),
        ("${EMPTY:+alt}", ""),
        ("${EMPTY+alt}", "alt"),
        ("${UNSET:+alt}", ""),
        ("${UNSET:-${A}-$B}", "a-b c"),
        ("${UNSET:-'quoted }'}", "quoted }"),
        ("${PATHLIKE#*/}", "usr/local/bin:/usr/bin"),
        ("${PATHLIKE##*/}", "bin"),
        ("${PATHLIKE%:*}", "/usr/local/bin"),
        ("${PATHLIKE%%/bin*}", "/usr/local"),
        ("${PATHLIKE/bin/sbin}", "/usr/local/sbin:/usr/bin"),
        ("${PATHLIKE//bin/sbin}", "/usr/local/sbin:/usr/sbin"),
        ("${PATHLIKE//\\/usr}", "/local/bin:/bin"),
        ("\\$A", "$A"),
        ("\\${A}", "${A}"),
        ("'$A'", "$A"),
        ('"$A \\$A \\"q\\" \\x"', 'a $A "q" \\x'),
        ("a\\ b", "a b"),
        ("$", "$"),
        ("$-x", "$-x"),
        ("cost: 5$", "cost: 5$"),
        ("$1", ""),
        ('"${B}"', "b c"),
        ("trailing\\", "trailing"),
    ],
)
def test_substitution(template, expected):
    env = {"A": "a", "B": "b c", "EMPTY": "", "PATHLIKE": "/usr/local/bin:/usr/bin"}
    assert lexer._word(template, "\\", env) == expected


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("${UNSET:?must be set}", "UNSET: must be set"),
        ("${EMPTY:?}", "EMPTY: parameter null or not set"),
        ("${A", "missing '}'"),
        ("${}", "bad substitution"),
        ("${A:=x}", "unsupported modifier"),
        ("${A!}", "unsupported modifier"),
        ("'open", "matching single-quote"),
        ('"open', "matching double-quote"),
        ("${A:-" * 40 + "}" * 40, "nested too deeply"),
    ],
)
def test_substitution_errors(template, message):
    with pytest.raises(lexer._Fail, match=message.replace("$", r"\$")):
        lexer._word(template, "\\", {"A": "a", "EMPTY": ""})


def test_substitution_errors_carry_the_location():
    assert errors("FROM a\n\nWORKDIR ${NOPE:?is required}\n") == "Dockerfile:3: NOPE: is required"


def test_expose_splits_substituted_words():
    stage = only('FROM a\nENV PORTS="80 443/udp"\nEXPOSE $PORTS "8080/TCP" 9000-9002\n')
    assert find(stage, "EXPOSE").words == ["80", "443/udp", "8080/TCP", "9000-9002"]
    assert image_config(stage)["ExposedPorts"] == {
        "80/tcp": {}, "443/udp": {}, "8080/tcp": {}, "9000/tcp": {}, "9001/tcp": {}, "9002/tcp": {},
    }  # fmt: skip


def test_env_and_label_forms():
    stage = only(
        "FROM a\nENV K V with  spaces\nENV K1=v1 K2=\"v 2\" K3=v\\ 3 K4='$K1' K5=${K1}x\n"
        'LABEL "com.example.vendor"="ACME Inc" multi.label1="v1" other=value\n'
        "ENV K1=new K6=$K1\n"
    )
    assert find(stage, "ENV", 0).pairs == [("K", "V with  spaces")]
    assert find(stage, "ENV", 1).pairs == [("K1", "v1"), ("K2", "v 2"), ("K3", "v 3"), ("K4", "$K1"), ("K5", "x")]
    assert find(stage, "LABEL").pairs == [("com.example.vendor", "ACME Inc"), ("multi.label1", "v1"),
                                          ("other", "value")]  # fmt: skip
    # all substitutions of one ENV see the values from before it
    assert find(stage, "ENV", 2).pairs == [("K1", "new"), ("K6", "v1")]


def test_copy_add_flags_and_forms():
    stage = only(
        "FROM a AS b\nARG U=app\n"
        'COPY --chown=$U:$U --chmod=0755 --link ["my file", "/dst dir/"]\n'
        "ADD --checksum=sha256:abc https://example.org/x.tar.gz /x/\n"
        'COPY "quoted" $U/ /opt/\n'
    )
    copy = find(stage, "COPY", 0)
    assert copy.flags == {"chown": "app:app", "chmod": "0755", "link": "true"}
    assert copy.words == ["my file", "/dst dir/"]
    assert find(stage, "ADD").flags == {"checksum": "sha256:abc"}
    assert find(stage, "COPY", 1).words == ["quoted", "app/", "/opt/"]


# --------------------------------------------------------------------------------------------------------------------
# Errors, with their location


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "Dockerfile:1: no FROM instruction"),
        ("# only a comment\n", "Dockerfile:1: no FROM instruction"),
        ("RUN echo\n", "Dockerfile:1: RUN before the first FROM"),
        ("FROM a\nFOO bar\n", "Dockerfile:2: unknown instruction: FOO"),
        ("FROM a\nRUN cat <<EOF\nhello\nEOF\n", "Dockerfile:3: unknown instruction: hello (heredocs"),
        ("FROM a\nRUN\n", "Dockerfile:2: RUN requires at least one argument"),
        ("FROM a\nRUN []\n", "Dockerfile:2: RUN requires at least one argument"),
        ("FROM\n", "Dockerfile:1: FROM requires at least one argument"),
        ("FROM a b\n", "Dockerfile:1: FROM requires either one or three arguments"),
        ("FROM a IS b\n", "Dockerfile:1: FROM requires either one or three arguments"),
        ("FROM a AS 1b\n", "Dockerfile:1: invalid stage name"),
        ("FROM a AS x\nFROM b AS X\n", "Dockerfile:2: duplicate stage name 'x' (also on line 1)"),
        ("ARG I\nFROM $I\n", "Dockerfile:2: base name ($I) should not be blank"),
        ("FROM --platfrom=x a\n", "Dockerfile:1: unknown flag for FROM: --platfrom"),
        ("FROM a\nCOPY --from a b\n", "Dockerfile:2: missing a value on flag: --from"),
        ("FROM a\nCOPY --chown=a --chown=b x y\n", "Dockerfile:2: duplicate flag specified: --chown"),
        ("FROM a\nCOPY --link=maybe x y\n", "Dockerfile:2: expecting boolean value"),
        ("FROM a\nCOPY onlyone\n", "Dockerfile:2: COPY requires at least two arguments"),
        ("FROM a\nENV K\n", "Dockerfile:2: ENV must have two arguments"),
        ("FROM a\nENV A=1 B\n", "Dockerfile:2: syntax error - can't find = in 'B'"),
        ("FROM a\nENV =x\n", "Dockerfile:2: ENV names can not be blank"),
        ('FROM a\nLABEL a="open\n', "Dockerfile:2: unexpected end of statement"),
        ("FROM a\nSHELL /bin/bash -c\n", "Dockerfile:2: SHELL requires the arguments to be in JSON form"),
        ("FROM a\nSHELL []\n", "Dockerfile:2: SHELL requires at least one argument"),
        ("FROM a\nEXPOSE 80/http\n", "Dockerfile:2: invalid protocol"),
        ("FROM a\nEXPOSE 70000\n", "Dockerfile:2: invalid port range"),
        ("FROM a\nEXPOSE eighty\n", "Dockerfile:2: invalid port"),
        ("FROM a\nWORKDIR $NOTHING\n", "Dockerfile:2: WORKDIR cannot be empty"),
        ('FROM a\nVOLUME ["/a", ""]\n', "Dockerfile:2: VOLUME specified can not be an empty string"),
        ("FROM a\nHEALTHCHECK --interval=5 CMD x\n", "Dockerfile:2: invalid duration '5'"),
        ("FROM a\nHEALTHCHECK --timeout=1us CMD x\n", "Dockerfile:2: HEALTHCHECK --timeout cannot be less than 1ms"),
        ("FROM a\nHEALTHCHECK --retries=x CMD x\n", "Dockerfile:2: HEALTHCHECK --retries must be a whole number"),
        ("FROM a\nHEALTHCHECK NONE x\n", "Dockerfile:2: HEALTHCHECK NONE takes no arguments"),
        ("FROM a\nHEALTHCHECK CMD\n", "Dockerfile:2: missing command after HEALTHCHECK CMD"),
        ("FROM a\nHEALTHCHECK RUN x\n", "Dockerfile:2: unknown type 'RUN' in HEALTHCHECK"),
        ("FROM a\nONBUILD ONBUILD RUN x\n", "Dockerfile:2: chaining ONBUILD"),
        ("FROM a\nONBUILD FROM b\n", "Dockerfile:2: FROM isn't allowed as an ONBUILD trigger"),
        ("FROM a\nONBUILD BOGUS x\n", "Dockerfile:2: unknown instruction in ONBUILD: BOGUS"),
        ("FROM a\nRUN --mount=type=cache,target=/c \\\n --nope x\n", "Dockerfile:2: unknown flag for RUN: --nope"),
    ],
)
def test_errors_start_with_file_and_line(text, message):
    assert errors(text).startswith(message)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FROM a AS one\nFROM b\nCOPY --from=nope /x /y\n", "Dockerfile:3: COPY --from=nope: no stage named 'nope'"),
        ("FROM a AS one\nCOPY --from=two /x /y\nFROM b AS two\n",
         "Dockerfile:2: COPY --from=two: stage 'two' is defined later (line 3)"),
        ("FROM a\nCOPY --from=0 /x /y\n", "Dockerfile:2: COPY --from=0: stage 0 is not defined before this one"),
        ("FROM a\nFROM b\nCOPY --from=5 /x /y\n", "Dockerfile:3: COPY --from=5: stage 5 is not defined"),
        ("FROM a AS me\nCOPY --from=ME /x /y\n", "Dockerfile:2: COPY --from=ME: a stage cannot copy from itself"),
        ("FROM a\nARG S=later\nCOPY --from=$S /x /y\nFROM b AS later\n", "Dockerfile:3: COPY --from=later: stage"),
    ],
)  # fmt: skip
def test_copy_from_errors(text, message):
    assert errors(text).startswith(message)


def test_copy_from_stage_index_name_and_image():
    stages = parse(
        "FROM a AS Build\nFROM b\nARG SRC=build\n"
        "COPY --from=0 /x /y\nCOPY --from=BUILD /x /y\nCOPY --from=$SRC /x /y\n"
        "COPY --from=nginx:latest /etc/nginx/nginx.conf /n.conf\n"
        "COPY --from=ghcr.io/astral-sh/uv /uv /bin/\n"
    )
    assert stages[0].name == "build"
    assert [i.from_stage for i in stages[1].instructions if i.cmd == "COPY"] == [0, 0, 0, None, None]


# --------------------------------------------------------------------------------------------------------------------
# The image config


def test_entrypoint_resets_inherited_cmd_only():
    base = {"Entrypoint": ["/docker-entrypoint.sh"], "Cmd": ["nginx"], "Env": ["PATH=/bin"]}
    # ENTRYPOINT drops the base image's CMD
    assert image_config(only('FROM a\nENTRYPOINT ["/app"]\n'), base)["Cmd"] is None
    # ...but not a CMD set earlier in the same stage
    config = image_config(only('FROM a\nCMD ["--x"]\nENTRYPOINT ["/app"]\n'), base)
    assert (config["Entrypoint"], config["Cmd"]) == (["/app"], ["--x"])
    # CMD alone keeps the base image's ENTRYPOINT
    config = image_config(only('FROM a\nCMD ["-g", "daemon off;"]\n'), base)
    assert (config["Entrypoint"], config["Cmd"]) == (["/docker-entrypoint.sh"], ["-g", "daemon off;"])
    # ENTRYPOINT [] clears it
    config = image_config(only("FROM a\nENTRYPOINT []\nCMD sh\n"), base)
    assert (config["Entrypoint"], config["Cmd"]) == ([], ["/bin/sh", "-c", "sh"])
    assert base == {"Entrypoint": ["/docker-entrypoint.sh"], "Cmd": ["nginx"], "Env": ["PATH=/bin"]}  # untouched


def test_env_chaining_and_base_merge():
    stage = only("FROM a\nENV A=1\nENV B=${A}2 PATH=/opt/bin:$PATH\nENV A=3\nWORKDIR rel\nWORKDIR ../x/./y/\n")
    config = image_config(stage, {"Env": ["PATH=/usr/bin", "HOME=/root", "A=0"], "WorkingDir": "/base",
                                  "Labels": {"keep": "1"}, "OnBuild": ["RUN x"]})  # fmt: skip
    # values were substituted at parse time with the default base PATH (no base_env given)
    assert config["Env"] == ["PATH=/opt/bin:" + DEFAULT_PATH, "HOME=/root", "A=3", "B=12"]
    assert config["WorkingDir"] == "/base/x/y"
    assert config["Labels"] == {"keep": "1"}
    assert "OnBuild" not in config
    assert image_config(stage)["WorkingDir"] == "/x/y"


def test_default_path_only_when_unset():
    assert image_config(only("FROM scratch\nENV A=1\n"))["Env"] == [f"PATH={DEFAULT_PATH}", "A=1"]
    assert image_config(only("FROM a\nENV PATH=/x\n"))["Env"] == ["PATH=/x"]


def test_labels_volumes_user_stopsignal_healthcheck():
    stage = only(
        'FROM a\nLABEL a=1 b=2\nLABEL a=3\nVOLUME /data /scratch\nVOLUME ["/data"]\nUSER 1000:1000\n'
        'STOPSIGNAL 9\nHEALTHCHECK --interval=1m30s --start-interval=500ms CMD ["/check", "-q"]\n'
    )
    config = image_config(stage)
    assert config["Labels"] == {"a": "3", "b": "2"}
    assert config["Volumes"] == {"/data": {}, "/scratch": {}}
    assert config["User"] == "1000:1000" and config["StopSignal"] == "9"
    assert config["Healthcheck"] == {"Test": ["CMD", "/check", "-q"], "Interval": 90 * 10**9,
                                     "StartInterval": 500 * 10**6}  # fmt: skip


@pytest.mark.parametrize(
    ("text", "ns"),
    [("0", 0), ("30s", 30 * 10**9), ("1m30s", 90 * 10**9), ("1.5h", 5400 * 10**9), ("250ms", 250 * 10**6),
     ("10us", 10_000), ("10µs", 10_000), ("7ns", 7), ("1h2m3s4ms", 3723004 * 10**6), (".5s", 5 * 10**8)],
)  # fmt: skip
def test_go_durations(text, ns):
    assert dockerfile_args._go_duration(text) == ns


# --------------------------------------------------------------------------------------------------------------------
# .dockerignore


@pytest.mark.parametrize(
    ("patterns", "path", "ignored"),
    [
        # the examples of Docker's documentation
        (["*/temp*"], "somedir/temporary.txt", True),
        (["*/temp*"], "somedir/temp", True),
        (["*/temp*"], "somedir/temp/inner.txt", True),  # a parent directory matches
        (["*/temp*"], "temporary.txt", False),
        (["*/temp*"], "a/b/temporary.txt", False),
        (["*/*/temp*"], "somedir/subdir/temporary.txt", True),
        (["*/*/temp*"], "somedir/temporary.txt", False),
        (["temp?"], "tempa", True),
        (["temp?"], "tempab", False),
        (["temp?"], "dir/tempa", False),
        (["**/*.go"], "main.go", True),
        (["**/*.go"], "cmd/app/main.go", True),
        (["**/*.go"], "main.go.txt", False),
        (["/foo/bar"], "foo/bar", True),
        (["foo/bar"], "foo/bar/baz", True),
        (["foo/bar"], "x/foo/bar", False),
        (["*.md", "!README.md"], "CHANGES.md", True),
        (["*.md", "!README.md"], "README.md", False),
        (["*.md", "!README*.md", "README-secret.md"], "README-secret.md", True),
        (["*.md", "!README*.md", "README-secret.md"], "README-public.md", False),
        (["*.md", "README-secret.md", "!README*.md"], "README-secret.md", False),  # the last match wins
        (["*", "!src"], "src/main.c", False),  # everything but src
        (["*", "!src"], "docs/x", True),
        # more of Docker's rules
        (["docs/**"], "docs", False),
        (["docs/**"], "docs/a/b.md", True),
        (["docs/**", "!docs/index.md"], "docs/index.md", False),
        (["**"], "anything/at/all", True),
        (["a/**/b"], "a/b", True),
        (["a/**/b"], "a/x/y/b", True),
        (["a/**/b"], "a/x/y/c", False),
        (["./build/", "/dist//"], "build/out.o", True),
        (["./build/", "/dist//"], "dist", True),
        (["x/../secret"], "secret", True),
        (["*.py[cod]"], "pkg/mod.pyc", False),
        (["**/*.py[cod]"], "pkg/mod.pyc", True),
        (["[^a]*"], "abc", False),
        (["[^a]*"], "bcd", True),
        (["data[0-9]"], "data7", True),
        (["\\*"], "*", True),
        (["\\*"], "x", False),
        (["node_modules"], "node_modules/left-pad/index.js", True),
        (["!node_modules"], "node_modules", False),
        (["*"], ".", False),
    ],
)
def test_dockerignore_matching(patterns, path, ignored):
    assert Matcher(patterns).ignored(path) is ignored


def test_dockerignore_file_syntax():
    matcher = parse_dockerignore("\ufeff# comment\n  *.log  \r\n\n   # indented: a pattern\n! keep.log\n/abs/\n")
    assert matcher.patterns == ["*.log", "# indented: a pattern", "!keep.log", "abs"]
    assert matcher.ignored("x.log") and not matcher.ignored("keep.log") and matcher.ignored("abs/y")
    assert matcher.has_exceptions


def test_dockerignore_errors():
    with pytest.raises(BuildError, match=r'^\.dockerignore:2: illegal exclusion pattern: "!"'):
        parse_dockerignore("ok\n!\n")
    with pytest.raises(BuildError, match=r"^ctx/.dockerignore:1: bad pattern '\[a'"):
        parse_dockerignore("[a\n", filename="ctx/.dockerignore")
    with pytest.raises(BuildError, match="bad pattern"):
        Matcher(["a\\"])


def test_dockerignore_corpus_file():
    matcher = parse_dockerignore((CORPUS / "python-project.dockerignore").read_text())
    expected = {
        "app/__pycache__/x.cpython-312.pyc": True,
        "app/mod.pyc": True,
        "app/mod.py": False,
        "mypkg.egg-info/PKG-INFO": True,
        ".git/config": True,
        ".venv/bin/python": True,
        "build/lib/x": True,
        "src/build/x": False,
        "CHANGELOG.md": True,
        "README.md": False,
        "docs/index.md": False,
        "docs/api.md": True,
        ".env": True,
        ".envrc": False,
        "Dockerfile": False,
    }
    assert {path: matcher.ignored(path) for path in expected} == expected


def test_load_dockerignore(tmp_path):
    assert load_dockerignore(str(tmp_path)).patterns == []
    (tmp_path / ".dockerignore").write_text("*.tmp\n")
    assert load_dockerignore(str(tmp_path)).patterns == ["*.tmp"]
    (tmp_path / "build.Dockerfile").write_text("FROM a\n")
    (tmp_path / "build.Dockerfile.dockerignore").write_text("*.o\n")
    assert load_dockerignore(str(tmp_path), str(tmp_path / "build.Dockerfile")).patterns == ["*.o"]
    assert load_dockerignore(str(tmp_path), str(tmp_path / "Dockerfile")).patterns == ["*.tmp"]


def make_context(root: Path) -> Path:
    for name in [
        "a.txt",
        "b.txt",
        ".hidden.txt",
        "c.md",
        "data1",
        "data2",
        "dataX",
        "src/main.c",
        "src/util.c",
        "src/util.h",
        "src/sub/deep.c",
        "docs/index.md",
        "docs/api.md",
        "logs/x.log",
        "weird[1].txt",
    ]:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
    return root


def test_walk_honours_exceptions(tmp_path):
    ctx = make_context(tmp_path)
    matcher = Matcher(["docs", "!docs/index.md", "logs", "src/*.h", ".hidden.txt"])
    walked = list(matcher.walk(str(ctx)))
    assert "docs/index.md" in walked and "docs" not in walked and "docs/api.md" not in walked
    assert not any(p.startswith("logs") for p in walked)
    assert "src/util.h" not in walked and "src/sub/deep.c" in walked and ".hidden.txt" not in walked
    assert walked == sorted(walked, key=lambda p: p.split("/"))
    assert list(Matcher().walk(str(ctx), "src")) == ["src/main.c", "src/sub", "src/sub/deep.c", "src/util.c",
                                                      "src/util.h"]  # fmt: skip


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        (["*.txt"], [".hidden.txt", "a.txt", "b.txt", "weird[1].txt"]),  # Go's * matches a leading dot
        (["?.txt"], ["a.txt", "b.txt"]),
        (["[ab].txt", "c.md"], ["a.txt", "b.txt", "c.md"]),
        (["data[0-9]"], ["data1", "data2"]),
        (["data[^0-9]"], ["dataX"]),
        (["src/*.c"], ["src/main.c", "src/util.c"]),
        (["*/*.c"], ["src/main.c", "src/util.c"]),
        (["src/*/*.c"], ["src/sub/deep.c"]),
        (["s*"], ["src"]),  # a directory is returned as itself
        (["/a.txt", "./b.txt", "src/../c.md"], ["a.txt", "b.txt", "c.md"]),
        (["."], ["."]),
        (["weird\\[1\\].txt"], ["weird[1].txt"]),
        (["https://example.org/x.tar.gz"], ["https://example.org/x.tar.gz"]),
        (["docs/*"], ["docs/api.md", "docs/index.md"]),
    ],
)
def test_copy_sources(tmp_path, patterns, expected):
    ctx = make_context(tmp_path)
    assert copy_sources(str(ctx), patterns) == expected


def test_copy_sources_with_dockerignore(tmp_path):
    ctx = make_context(tmp_path)
    matcher = Matcher(["*.txt", "!b.txt", "docs", "!docs/index.md"])
    assert copy_sources(str(ctx), ["*.txt"], matcher) == ["b.txt"]
    assert copy_sources(str(ctx), ["docs/*"], matcher) == ["docs/index.md"]
    with pytest.raises(BuildError, match=r"^Dockerfile:7: no source files were specified"):
        copy_sources(str(ctx), ["[ac].txt"], matcher, where="Dockerfile:7:")
    with pytest.raises(BuildError, match="a.txt: file not found in build context or excluded by .dockerignore"):
        copy_sources(str(ctx), ["a.txt"], matcher)


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("*.none", "no source files were specified"),
        ("missing.txt", "file not found in build context"),
        ("../outside", "forbidden path outside the build context"),
        ("src/../../outside", "forbidden path outside the build context"),
        ("..", "forbidden path outside the build context"),
        ("[a", "bad pattern"),
        ("link-out", "leads outside the build context"),
        ("link-*", "leads outside the build context"),
    ],
)
def test_copy_sources_errors(tmp_path, pattern, message):
    ctx = make_context(tmp_path / "ctx")
    (ctx / "link-out").symlink_to(tmp_path)
    with pytest.raises(BuildError, match=message):
        copy_sources(str(ctx), [pattern])


def test_copy_sources_symlink_inside_is_fine(tmp_path):
    ctx = make_context(tmp_path)
    (ctx / "link-in").symlink_to("src")
    assert copy_sources(str(ctx), ["link-in/*.h"]) == ["link-in/util.h"]


# --------------------------------------------------------------------------------------------------------------------
# Conversion to a definition file

C_DEFFILE = """\
Bootstrap: docker
From: gcc:13
Stage: build

%files
    Makefile /src/Makefile
    src/. /src/src

%post
    mkdir -p /src
    cd /src
    ( make -j"$(nproc)" CFLAGS="-O2 -Wall"     && strip hello     && ./hello --version ) || exit $?

Bootstrap: docker
From: debian:bookworm-slim
Stage: stage1

%files from build
    /src/hello /usr/local/bin/hello

%runscript
    if [ "$#" -eq 0 ]; then set -- --greeting world; fi
    exec /usr/local/bin/hello "$@"

%labels
    org.opencontainers.image.title hello
    org.opencontainers.image.licenses BSD-3-Clause
"""


def test_to_deffile_c_multistage():
    text, warnings = to_deffile(corpus("c-multistage.Dockerfile"))
    assert text == C_DEFFILE
    assert warnings == []


def test_to_deffile_env_args_workdir_shell_and_not_converted():
    stages = parse(
        'FROM python:3.12 AS base\nARG UID=1000\nARG VER=2 NOVALUE\nENV APP_HOME=/srv/app "X Y"=1\n'
        "WORKDIR $APP_HOME\nCOPY requirements.txt .\nRUN pip install -r requirements.txt # deps\n"
        'SHELL ["/bin/bash", "-c"]\nRUN echo "$VER" | tee v\nRUN ["python", "-V"]\nWORKDIR sub\n'
        "COPY --chmod=0644 a.txt b.txt ./\nUSER app\nEXPOSE 80\nADD https://x.org/f.tgz /tmp/\n"
        'COPY --from=busybox:latest /bin/busybox /copy\nENTRYPOINT ["python", "-m", "app"]\n'
        "FROM base AS final\nLABEL version=$VER\n",
        build_args={"VER": "3"},
    )
    text, warnings = to_deffile(stages)
    base, final = text.split("\n\nBootstrap:")
    assert base.splitlines()[:3] == ["Bootstrap: docker", "From: python:3.12", "Stage: base"]
    assert "# not converted (line 13): USER app" in base
    assert "# not converted (line 14): EXPOSE 80" in base
    assert "# not converted (line 15): ADD https://x.org/f.tgz /tmp/" in base
    assert "# not converted (line 16): COPY --from=busybox:latest /bin/busybox /copy" in base
    assert "    requirements.txt /srv/app/requirements.txt\n" in base
    assert "    a.txt /srv/app/sub/\n" not in base and "    a.txt /srv/app/sub/a.txt\n" in base
    post = base.split("%post\n")[1].split("\n\n")[0].splitlines()
    assert post == [
        "    export VER=3",
        "    export APP_HOME=/srv/app",
        "    mkdir -p /srv/app",
        "    cd /srv/app",
        "    (",
        "    pip install -r requirements.txt # deps",
        "    ) || exit $?",
        "    ( /bin/bash -c 'echo \"$VER\" | tee v' ) || exit $?",
        "    ( python -V ) || exit $?",
        "    mkdir -p /srv/app/sub",
        "    cd /srv/app/sub",
        "    chmod -R 0644 /srv/app/sub/a.txt",
        "    chmod -R 0644 /srv/app/sub/b.txt",
    ]
    assert "%environment\n    export APP_HOME=/srv/app\n" in base
    assert '%runscript\n    exec python -m app "$@"' in base
    assert final.startswith(" docker\nFrom: python:3.12\nStage: final\n")
    assert "%labels\n    version 3\n" in final
    assert any("UID is read-only in bash" in w for w in warnings)
    assert any("'X Y' is not a valid shell name" in w for w in warnings)
    assert any("USER not converted" in w for w in warnings)
    assert any("FROM base: a definition file cannot start from another stage" in w for w in warnings)
    assert any(w.startswith("stage base, line 12: COPY after RUN") for w in warnings)


def test_to_deffile_scratch_unnamed_stages_and_context_dirs(tmp_path):
    (tmp_path / "assets").mkdir()
    stages = parse('FROM alpine\nRUN make\nFROM scratch\nCOPY --from=0 /out/ /\nCOPY assets /web\nCMD ["/app"]\n')
    text, _ = to_deffile(stages, context_dir=str(tmp_path))
    assert "Bootstrap: scratch\nStage: stage1\n" in text
    assert "%files from stage0\n    /out/. /\n" in text
    assert "%files\n    assets/. /web\n" in text
    text, _ = to_deffile(stages)  # without the context, `assets` is taken for a file
    assert "%files\n    assets /web\n" in text


def test_to_deffile_entrypoint_only_and_shell_form():
    text, _ = to_deffile(parse("FROM a\nENTRYPOINT exec nginx -g 'daemon off;'\n"))
    assert "%runscript\n    exec /bin/sh -c 'exec nginx -g '\"'\"'daemon off;'\"'\"'' \"$@\"\n" in text


# --------------------------------------------------------------------------------------------------------------------
# Fuzzing

FRAGMENTS = [
    "FROM alpine", "FROM a AS b", "FROM --platform=$BUILDPLATFORM ${IMG:-x} AS c", "ARG IMG=busybox", "ARG A",
    "ARG B=${A:-1}", "ENV A=1 B=\"2 3\"", "ENV K V", "LABEL a=b", "RUN echo hi", "RUN [\"a\", \"b\"]", "CMD x",
    "CMD [\"x\"]", "ENTRYPOINT [\"e\"]", "SHELL [\"/bin/bash\", \"-c\"]", "WORKDIR /w", "WORKDIR rel", "USER u",
    "EXPOSE 80 443/udp", "VOLUME /v", "STOPSIGNAL SIGINT", "HEALTHCHECK --interval=5s CMD true", "HEALTHCHECK NONE",
    "ONBUILD RUN x", "COPY a b", "COPY --from=b /x /y", "COPY --from=0 /x /y", "ADD http://x/y /z", "MAINTAINER m",
    "# escape=`", "# syntax=x", "# comment", "", "\\", "`", "${", "$", "\"", "'", "[", "--", "=", "\t", "RUN a \\",
    "COPY --chown=$A:${B:?x} a b", "ENV X=${X:+${Y:-z}}", "LABEL x=${A/a/b} y=${A%%*}", "FROM a AS a",
]  # fmt: skip

dockerfile_text = st.one_of(
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=12)), max_size=14).map("\n".join),
    st.lists(st.sampled_from(FRAGMENTS), max_size=10).map(" ".join),
    st.text(max_size=200),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dockerfile_text, st.dictionaries(st.sampled_from(["A", "IMG", "B", "X"]), st.text(max_size=5), max_size=3))
def test_fuzz_parse_raises_only_build_errors(text, build_args):
    try:
        stages = parse(text, build_args=build_args)
    except BuildError as e:
        assert str(e).startswith("Dockerfile:")
        return
    config = None
    for stage in stages:
        config = image_config(stage, config)
    assert isinstance(to_deffile(stages)[0], str)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet="ab*?[]^!-/\\.#\n ", max_size=8), max_size=5), st.text(alphabet="ab/.[]*", max_size=8))
def test_fuzz_dockerignore_raises_only_build_errors(lines, path):
    try:
        matcher = parse_dockerignore("\n".join(lines))
    except BuildError:
        return
    assert matcher.ignored(path) in (True, False)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="$ {}:-+?#%/ab\\'\"", max_size=30))
def test_fuzz_substitution(template):
    try:
        lexer._word(template, "\\", {"a": "x y", "b": ""})
    except lexer._Fail:
        pass


@pytest.mark.parametrize("module", [dockerfile, lexer, dockerfile_args, dockerfile_config, dockerfile_context,
                                    dockerfile_convert], ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_module_is_standard_library_only(module):
    source = Path(module.__file__).read_text()
    lines = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    imports = {line.split()[1].split(".")[0] for line in lines}
    assert imports <= {"__future__", "copy", "json", "os", "platform", "posixpath", "re", "shlex", "collections",
                       "yurt"}  # fmt: skip
    ours = {line.split()[1] for line in lines if line.split()[1].startswith("yurt")}
    assert all(name in ("yurt.errors", "yurt.record") or name.startswith("yurt.builder.dockerfile") for name in ours)
    assert os.path.basename(module.__file__) == module.__name__.rsplit(".", 1)[1] + ".py"


def test_to_deffile_quotes_paths_with_blanks_and_parses_back(tmp_path):
    from yurt.builder import deffile

    (tmp_path / "my file.txt").write_text("x")
    stages = dockerfile.parse('FROM debian\nCOPY ["my file.txt", "/opt/my dir/"]\n')
    text, _ = to_deffile(stages, context_dir=str(tmp_path))
    defs = deffile.parse(text)
    assert defs[0].files == [("my file.txt", "/opt/my dir/my file.txt")]
