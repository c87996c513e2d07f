"""Definition files: the corpus, every error with its line, CRLF, continuations, the round trip, and fuzzing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yurt.builder import deffile_model
from yurt.builder.deffile import parse, validate
from yurt.builder.deffile_model import Definition, Section, to_text
from yurt.errors import BuildError

CORPUS = Path(__file__).parent / "corpus" / "deffiles"
CORPUS_FILES = sorted(p.name for p in CORPUS.glob("*.def"))


def load(name: str) -> str:
    return (CORPUS / name).read_bytes().decode("utf-8")  # keeps CRLF as written


def one(text: str) -> Definition:
    defs = parse(text)
    assert len(defs) == 1
    return defs[0]


def error(text: str | bytes, filename: str = "Singularity") -> str:
    with pytest.raises(BuildError) as e:
        parse(text, filename=filename)
    return str(e.value)


# -- the corpus -------------------------------------------------------------------


def test_corpus_is_there():
    assert len(CORPUS_FILES) >= 15


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_corpus_parses_and_round_trips(name):
    text = load(name)
    defs = parse(text, filename=name)
    assert defs
    again = parse(to_text(defs), filename=name)
    assert again == defs
    assert to_text(again) == to_text(defs)  # canonical text is a fixed point
    # the stages' raw texts are the file, piece by piece
    assert "".join(d.raw for d in defs) == text.removeprefix("\ufeff")
    for d in defs:
        assert d.filename == name
        for w in d.warnings:
            assert re.match(rf"{re.escape(name)}:\d+: ", w)
        # the accessors never fail on what parse accepted
        d.files, d.files_from, d.apps, d.labels, d.arguments, d.post, d.help  # noqa: B018


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_corpus_with_crlf_parses_the_same(name):
    text = load(name).replace("\r\n", "\n")
    assert parse(text.replace("\n", "\r\n")) == parse(text)


def test_docker_ubuntu_apt():
    d = one(load("docker_ubuntu_apt.def"))
    assert (d.bootstrap, d.source, d.stage) == ("docker", "ubuntu:22.04", None)
    assert d.header == {"bootstrap": "docker", "from": "ubuntu:22.04"}
    assert [s.name for s in d.sections] == ["help", "labels", "environment", "post", "runscript", "test"]
    assert d.labels == {
        "Author": "jane.doe@example.org",
        "Version": "v1.2.0",
        "org.opencontainers.image.source": "https://github.com/example/ubuntu-dev",
    }
    # shell continuation lines belong to the script, untouched
    assert "apt-get install -y --no-install-recommends \\\n        build-essential \\\n" in d.post
    assert d.post.endswith("$APPTAINER_ENVIRONMENT\n\n")
    assert d.help.strip().startswith("A small Ubuntu image")
    assert "export LC_ALL=C.UTF-8" in d.environment
    assert d.runscript.strip().endswith('exec python3 "$@"')
    assert "gcc --version" in d.test
    assert d.files == [] and d.files_from == {} and d.apps == {} and d.warnings == []
    assert d.line == 1
    d.validate()


def test_debootstrap_with_header_comment_and_continued_include():
    d = one(load("debootstrap_bookworm.def"))
    assert d.bootstrap == "debootstrap"  # written "BootStrap"
    assert d.header["osversion"] == "bookworm"
    assert d.header["mirrorurl"] == "http://mirror.example/debian/"
    assert d.header["include"] == "ca-certificates,curl,less"
    assert d.source is None
    assert d.line == 2  # the comment line comes first
    assert d.raw.startswith("# Debian 12")
    assert "apt-get -y install vim-tiny" in d.post
    d.validate()


def test_localimage_files():
    d = one(load("localimage_extend.def"))
    assert (d.bootstrap, d.source) == ("localimage", "./base.sif")
    assert d.files == [("requirements.txt", "/opt/app/requirements.txt"), ("src", "/opt/app/src")]


def test_multistage_files_from():
    build, final = parse(load("multistage_go.def"))
    assert (build.stage, build.source, build.line) == ("build", "golang:1.22-alpine", 1)
    assert (final.stage, final.source, final.line) == ("final", "alpine:3.19", 13)
    assert build.files == [("./hello.go", "/src/hello.go")]
    assert final.files == []
    assert final.files_from == {
        "build": [("/usr/local/bin/hello", "/usr/local/bin/hello"), ("/src/hello.go", "/src/hello.go")]
    }
    assert final.section_args("files") == ["from", "build"]
    # the comment between the stages is the end of the first stage's last section
    assert build.post.endswith("# The final image only carries the binary.\n")
    assert final.raw.startswith("Bootstrap: docker\nFrom: alpine:3.19")


def test_scif_apps():
    d = one(load("scif_apps.def"))
    assert list(d.apps) == ["foo", "bar"]
    assert d.apps["foo"] == {
        "apprun": '    exec echo "RUNNING FOO"\n\n',
        "applabels": "    BESTAPP FOO\n\n",
        "appinstall": "    touch foo.exec\n\n",
        "appenv": "    SOFTWARE=foo\n    export SOFTWARE\n\n",
        "apphelp": "    This is the help for foo.\n\n",
        "appfiles": '    foo.txt\n    "data dir/input.csv" /scif/data/input.csv\n\n'
        "# =======================\n# bar\n# =======================\n\n",
    }
    assert set(d.apps["bar"]) == {"apphelp", "applabels", "appinstall", "appenv", "apptest", "appstart"}
    assert d.app_files("foo") == [("foo.txt", "foo.txt"), ("data dir/input.csv", "/scif/data/input.csv")]
    assert d.app_labels("bar") == {"BESTAPP": "BAR"}
    assert d.post == ""  # app sections are not the main sections
    assert all(s.app in (None, "foo", "bar") for s in d.sections)
    assert "GLOBAL=variables" in d.environment


def test_arguments_section_before_templating():
    d = one(load("arguments_templated.def"))
    assert d.source == "ubuntu:{{ UBUNTU_VERSION }}"
    assert d.arguments == {
        "UBUNTU_VERSION": "22.04",
        "PYTHON": "python3",
        "PIP": "{{ PYTHON }}-pip",
        "PREFIX": "/opt/{{ APP }}-{{ APP_VERSION }}",
        "APP": "mytool",
        "APP_VERSION": "2.1",
    }


def test_runscript_with_custom_shebang():
    d = one(load("runscript_python_shebang.def"))
    assert d.runscript.startswith("#!/usr/bin/env python3\nimport sys\n")
    assert d.startscript.lstrip().startswith("#!/bin/bash")
    assert d.test.startswith("#!/bin/sh\n")


def test_setup_and_quoted_files_merge():
    d = one(load("setup_files_quoted.def"))
    assert "${APPTAINER_ROOTFS}/opt/data" in d.setup
    assert d.files == [
        ("my file.txt", "/opt/data/my file.txt"),
        ("single quoted.txt", "/opt/data/single quoted.txt"),
        ("*.conf", "/etc/myapp/"),
        ("LICENSE", "LICENSE"),
    ]
    assert len(d.sections_named("files")) == 2


def test_crlf_file():
    d = one(load("crlf_windows.def"))
    assert (d.source, d.stage) == ("alpine:3.19", "win")
    assert d.labels == {"Maintainer": "windows-user"}
    assert d.post == "    apk add --no-cache bash \\\n        coreutils\n\n"
    assert "\r" not in d.post + d.runscript


def test_tabs_inline_comment_and_post_interpreter():
    d = one(load("tabs_comments.def"))
    assert d.header == {"bootstrap": "docker", "from": "nvidia/cuda:12.4.1-devel-ubuntu22.04"}
    assert d.section_args("post") == ["-c", "/bin/bash"]
    assert d.post.startswith("\tset -euo pipefail\n\tfor f in a b; do\n\t\techo")
    assert "\texport CUDA_HOME=/usr/local/cuda\n" in d.environment


def test_busybox_scratch_oras_oci():
    d = one(load("busybox.def"))
    assert d.bootstrap == "busybox" and d.header["mirrorurl"].endswith("/busybox")
    d = one(load("scratch.def"))
    assert d.bootstrap == "scratch" and d.source is None and d.files == [("./hello-static", "/bin/hello")]
    first, second = parse(load("oras_and_oci.def"))
    assert (first.bootstrap, first.source, first.stage) == ("oras", "ghcr.io/example/base:1.0", None)
    assert (second.bootstrap, second.source, second.stage) == ("oci-archive", "./saved.tar", "second")
    validate([first, second])


def test_legacy_pre_and_fingerprints_warn():
    d = one(load("legacy_pre_fingerprints.def"))
    assert d.header["fingerprints"] == (
        "12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84,22045C8C0B1004D058DE4BEDA20C27EE7FF7BA84"
    )
    assert d.pre.strip() == 'echo "runs on the host before bootstrap"'
    assert d.warnings == [
        "Singularity:3: Fingerprints: ignored: signature verification of the bootstrap image is not implemented",
        "Singularity:6: %pre is a legacy section that runs on the host before the bootstrap; prefer %setup",
    ]


def test_hpc_openmpi_two_stages():
    devel, runtime = parse(load("hpc_openmpi.def"))
    assert devel.arguments == {"OMPI_VERSION": "4.1.6"}
    assert devel.files == [("mpitest.c", "/opt")]
    assert "export OMPI_VERSION={{ OMPI_VERSION }}" in devel.post
    assert runtime.files_from == {"devel": [("/opt/ompi", "/opt/ompi"), ("/opt/mpitest", "/opt/mpitest")]}
    assert runtime.runscript.strip() == 'exec /opt/mpitest "$@"'


def test_unsupported_agent_parses_but_does_not_validate():
    d = one(load("unsupported_library.def"))
    assert d.bootstrap == "library"
    with pytest.raises(BuildError, match=r"^Singularity:1: Bootstrap: library is not supported by yurt yet"):
        d.validate()
    with pytest.raises(BuildError, match="not supported by yurt yet"):
        validate(parse(load("unsupported_library.def")))


@pytest.mark.parametrize("agent", ["shub", "yum", "dnf", "zypper", "arch", "buildkit", "dockerfile", "docker-daemon"])
def test_other_unsupported_agents(agent):
    d = one(f"Bootstrap: {agent}\nFrom: x\n")
    with pytest.raises(BuildError, match=rf"^Singularity:1: Bootstrap: {agent} is not supported by yurt yet"):
        d.validate()


def test_three_stages_case_insensitive_and_merged_files_from():
    one_, two, three = parse(load("three_stages.def"))
    assert [d.stage for d in (one_, two, three)] == ["one", "two", "three"]
    assert [d.line for d in (one_, two, three)] == [1, 8, 15]
    assert three.header["bootstrap"] == "docker" and three.bootstrap == "docker"
    assert three.files_from == {
        "one": [("/one", "/one"), ("/one", "/one-again")],
        "two": [("/two", "/two"), ("/two", "/two-again")],
    }


# -- header details -----------------------------------------------------------------


def test_header_keys_are_case_insensitive_values_kept():
    d = one("BOOTSTRAP: Docker\nfRoM:   Ubuntu:22.04  \n")
    assert d.header == {"bootstrap": "Docker", "from": "Ubuntu:22.04"}
    assert d.bootstrap == "docker"


def test_header_continuations():
    d = one(
        "Bootstrap: debootstrap\nOSVersion: \\\n  jammy\nMirrorURL: http://mirror.example/ubuntu/\n"
        "Include: a,\\\n    b,\\\n    c\n%post\n"
    )
    assert d.header["osversion"] == "jammy"
    assert d.header["include"] == "a,b,c"
    # \n\ continues after a newline; a comment line or the end of the header ends a continuation
    d = one("Bootstrap: docker\nFrom: x\nInclude: one\\n\\\n  two\\n\\\n# comment\nSetOpt: a \\\n")
    assert d.header["include"] == "one\ntwo\n"
    assert d.header["setopt"] == "a "
    assert parse(to_text([d])) == [d]


def test_header_inline_comments_blank_lines_and_otherurl():
    d = one("\n# leading comment\n\nBootstrap: zypper  # SLE\n\nOtherURL1: http://a\notherurl22: http://b\n")
    assert d.header == {"bootstrap": "zypper", "otherurl1": "http://a", "otherurl22": "http://b"}
    assert "OtherURL22: http://b" in d.to_text()


def test_repeated_header_key_warns_last_wins():
    d = one("Bootstrap: docker\nFrom: a\nFrom: b\n")
    assert d.source == "b"
    assert d.warnings == ["Singularity:3: From: given again (first on line 2); the last value wins"]


def test_all_valid_header_keys_accepted():
    keys = [k for k in deffile_model.HEADER_KEYS if k not in ("bootstrap", "from")]
    d = one("Bootstrap: docker\nFrom: x\n" + "".join(f"{k}: v\n" for k in keys))
    assert list(d.header) == ["bootstrap", "from", *keys]


def test_empty_stage_name_is_no_name():
    a, b = parse("Bootstrap: docker\nFrom: x\nStage:\nBootstrap: docker\nFrom: y\nStage:\n")
    assert a.stage is None and b.stage is None


# -- sections -------------------------------------------------------------------------


def test_sections_case_insensitive_repeated_and_in_order():
    d = one(
        "Bootstrap: docker\nFrom: x\n%POST\necho 1\n%Environment\nexport A=1\n%post -c /bin/bash\necho 2\n"
        "  %labels\nA b c\nA d\n"
    )
    assert [(s.name, s.line) for s in d.sections] == [("post", 3), ("environment", 5), ("post", 7), ("labels", 9)]
    assert d.post == "echo 1\necho 2\n"
    assert d.section_args("post") == ["-c", "/bin/bash"]
    assert d.sections_named("post")[0].args == []
    assert d.labels == {"A": "d"}


def test_section_argument_quoting_round_trips():
    d = one("Bootstrap: docker\nFrom: x\n%post -c \"/bin/bash -l\" 'it''s'\necho\n")
    assert d.section_args("post") == ["-c", "/bin/bash -l", "its"]
    assert parse(d.to_text()) == [d]


def test_empty_sections_and_body_without_final_newline():
    d = one("Bootstrap: docker\nFrom: x\n%post\n%runscript\nexec foo")
    assert d.post == "" and d.runscript == "exec foo\n"


def test_args_on_a_section_that_takes_none_warn():
    d = one("Bootstrap: docker\nFrom: x\n%labels extra\nA b\n")
    assert d.warnings == ["Singularity:3: %labels: arguments 'extra' are ignored"]


def test_canonical_text():
    d = one("# c\nbootstrap:   Docker\n  from : ubuntu # x\n\n%post   -c /bin/bash\n  echo hi\n%labels\nA b\n")
    assert d.to_text() == "Bootstrap: Docker\nFrom: ubuntu\n\n%post -c /bin/bash\n  echo hi\n%labels\nA b\n"


def test_equality_ignores_positions_and_raw():
    a = one("Bootstrap: docker\nFrom: x\n%post\necho\n")
    b = one("# comment\n\nBootstrap: docker\n\nFrom: x\n%post\necho\n")
    assert a == b and a.raw != b.raw and a.sections[0].line != b.sections[0].line
    assert Section("post", [], "x\n", None, 3) == Section("post", [], "x\n", None, 9)
    assert Section("post", [], "x\n") != Section("post", ["-c", "sh"], "x\n")


def test_bytes_input_and_bom():
    assert parse(b"Bootstrap: docker\nFrom: x\n") == parse("\ufeffBootstrap: docker\nFrom: x\n")


# -- errors, each with its line ---------------------------------------------------------

ERRORS = [
    # (text, line, a fragment of the message)
    ("Bootstrap: docker\nFrom: x\nMaintainer: me\n", 3, "unknown header key 'maintainer' (valid keys: Bootstrap, "),
    ("Bootstrap: docker\nFrom: x\nOtherURL: y\n", 3, "unknown header key 'otherurl'"),
    ("Bootstrap: docker\nFrom: x\n\n%post\necho\n\n%postinstall\nmake\n", 7, "unknown section %postinstall"),
    ("Bootstrap: docker\nFrom: x\n%\n", 3, "has no name after '%'"),
    ("Bootstrap: docker\nFrom: x\nStage: a\n%files from b\n/x\n", 4, "no earlier stage is named 'b'"),
    ("Bootstrap: docker\nFrom: x\nStage: a\n%files from a\n/x\n", 4, "cannot copy from itself"),
    (
        "Bootstrap: docker\nFrom: x\nStage: a\n%files from b\n/x\nBootstrap: docker\nFrom: y\nStage: b\n",
        4,
        "stage b comes later in the file",
    ),
    ("Bootstrap: docker\nFrom: x\n%files from\n/x\n", 3, "%files takes no arguments or 'from STAGE'"),
    ("Bootstrap: docker\nFrom: x\n%files to b\n/x\n", 3, "%files takes no arguments or 'from STAGE'"),
    ("Bootstrap: docker\n%post\necho\n", 1, "Bootstrap: docker needs a From: header"),
    ("Bootstrap: docker\nFrom:\n%post\n", 2, "Bootstrap: docker needs a From: header"),
    ("# a comment\n\nBootstrap: oras\nStage: x\n", 3, "Bootstrap: oras needs a From: header"),
    ("Bootstrap: debootstrap\nOSVersion: bookworm\n", 1, "needs a MirrorURL: header"),
    ("Bootstrap: debootstrap\nMirrorURL: http://mirror.example/debian\n", 1, "needs a OSVersion: header"),
    ("From: ubuntu\n%post\necho\n", 1, "missing Bootstrap: header"),
    ("", 1, "missing Bootstrap: header (the definition file is empty)"),
    ("# only\n# comments\n", 1, "missing Bootstrap: header (the definition file is empty)"),
    ("# c\n%labels\nBootstrap: docker\nFrom: x\n", 2, "comes before the first Bootstrap: line (line 3)"),
    ("Bootstrap:\n", 1, "Bootstrap: needs an agent"),
    ("Bootstrap: dokcer\nFrom: x\n", 1, "unknown bootstrap agent 'dokcer'"),
    ("Bootstrap: docker\nFrom: x\napt-get update\n", 3, "invalid header line 'apt-get update'"),
    ("Bootstrap: docker\nFrom: x\n%files\n  a\n  b c d\n", 5, "has 3 paths"),
    ('Bootstrap: docker\nFrom: x\n%files\n  "a b\n', 4, 'unterminated " quote'),
    ('Bootstrap: docker\nFrom: x\n%files\n  "" /x\n', 4, "has an empty path"),
    ("Bootstrap: docker\nFrom: x\n%appfiles foo\n  a b c\n", 4, "has 3 paths"),
    ("Bootstrap: docker\nFrom: x\n%apprun\necho\n", 3, "%apprun needs an app name"),
    ("Bootstrap: docker\nFrom: x\n%appinstall ../evil\n", 3, "invalid app name '../evil'"),
    ('Bootstrap: docker\nFrom: x\n%post -c "/bin/bash\n', 3, "cannot split the arguments of %post"),
    ("Bootstrap: docker\nFrom: x\nStage: a\nBootstrap: docker\nFrom: y\nStage: a\n", 6, "stage name 'a' is already"),
    ("Bootstrap: docker\r\nFrom: x\r\n\r\n%bogus\r\n", 4, "unknown section %bogus"),
    ("Bootstrap: docker\nFrom: x\nInclude: a,\\\n  b\nBad: \\\n  1\n", 5, "unknown header key 'bad'"),
]


@pytest.mark.parametrize(("text", "line", "fragment"), ERRORS)
def test_errors_name_file_and_line(text, line, fragment):
    message = error(text, filename="my.def")
    assert message.startswith(f"my.def:{line}: "), message
    assert fragment in message, message


def test_unknown_section_lists_valid_ones():
    message = error("Bootstrap: docker\nFrom: x\n%install\n")
    assert "%post" in message and "%appinstall NAME" in message


def test_not_utf8_names_the_line():
    assert error(b"Bootstrap: docker\nFrom: x\n%post\n\xff\n").startswith("Singularity:4: ")


def test_a_bootstrap_line_inside_a_script_starts_a_stage_as_in_apptainer():
    defs = parse("Bootstrap: docker\nFrom: a\n%post\necho\nbootstrap: docker\nFrom: b\n")
    assert [d.source for d in defs] == ["a", "b"]
    assert error("Bootstrap: docker\nFrom: a\n%post\ncat <<EOF\nBootstrap: docker\nEOF\n") == (
        "Singularity:6: invalid header line 'EOF': expected 'Key: value' (or is a %section line missing before it?)"
    )


# -- fuzzing --------------------------------------------------------------------------------

FRAGMENTS = [
    "Bootstrap: docker",
    "bootstrap: localimage",
    "BOOTSTRAP:",
    "Bootstrap: debootstrap",
    "Bootstrap: scratch",
    "Bootstrap: library",
    "Bootstrap: nope",
    "From: ubuntu:22.04",
    "From:",
    "from: {{ IMAGE }}",
    "Stage: build",
    "Stage: final",
    "Stage:",
    "OSVersion: bookworm",
    "MirrorURL: http://mirror.example/debian",
    "Include: a,\\",
    "  b,\\",
    "Include: x\\n\\",
    "\\",
    "\\n\\",
    "Fingerprints: ABCD",
    "OtherURL3: u",
    "Maintainer: me",
    "no colon here",
    "key: value # comment",
    "%post",
    "%post -c /bin/bash",
    "%post -c '/bin/bash",
    "%POST",
    "  %environment",
    "%files",
    "%files from build",
    "%files from final",
    "%files from",
    "%files from nowhere",
    "%appinstall foo",
    "%apprun foo",
    "%appfiles foo",
    "%applabels bar",
    "%apprun",
    "%appenv ../x",
    "%labels",
    "%arguments",
    "%help",
    "%runscript",
    "%startscript",
    "%test",
    "%setup",
    "%pre",
    "%bogus",
    "%",
    "%%post",
    "a b",
    '"a b" c',
    "'a b' 'c d'",
    "'unterminated",
    "x y z",
    "src # comment",
    '""',
    "# comment",
    "#!/bin/bash",
    "{{ VAR }}",
    "VAR={{ OTHER }}",
    "K=V",
    "export A=1",
    'echo "$@"',
    "",
    " ",
    "\t",
    "\ufeff",
    "\x00",
    "é ü ß",
]
fragment = st.sampled_from(FRAGMENTS)
line = st.one_of(fragment, fragment, st.text(max_size=12), st.builds(lambda a, b: a + " " + b, fragment, fragment))
newline = st.sampled_from(["\n", "\n", "\n", "\r\n", "\r", "\n\n"])


@st.composite
def deffile_texts(draw):
    lines = draw(st.lists(line, max_size=25))
    seps = draw(st.lists(newline, min_size=len(lines), max_size=len(lines)))
    text = "".join(a + b for a, b in zip(lines, seps, strict=True))
    return draw(st.sampled_from(["", "Bootstrap: docker\nFrom: x\n"])) + text


HEADERS = [
    "Bootstrap: docker\nFrom: img\n",
    "Bootstrap: scratch\n",
    "Bootstrap: debootstrap\nOSVersion: a\nMirrorURL: b\nInclude: c,\\\n d\n",
    "Bootstrap: busybox\nStage: s\n",
]
SECTION_LINES = [
    "%post",
    "%post -c /bin/bash",
    "%files",
    "%labels",
    "%environment",
    "%runscript",
    "%test",
    "%appinstall app",
    "%apprun app",
    "%appfiles app",
    "%help",
    "%arguments",
    "%setup",
    "%startscript",
]
body_line = st.one_of(
    st.sampled_from(["echo hi", "  a", "\tb c", "", "# c", "K=V", '"q r" /s', "x \\"]), st.text(max_size=15)
)


# header lines with odd values: backslashes, literal \\n, continuations, blanks and comments between
header_value = st.text(alphabet="ab :\\n\t#%", max_size=8)
extra_header_line = st.one_of(
    st.builds(lambda k, v: f"{k}: {v}", st.sampled_from(["Include", "SetOpt", "OtherURL2", "confurl"]), header_value),
    header_value,
    st.just("# comment"),
    st.just(""),
)


@st.composite
def plausible_definitions(draw):
    """Mostly valid definition files, to exercise the round trip."""
    out = [draw(st.sampled_from(HEADERS))]
    out.extend(x + "\n" for x in draw(st.lists(extra_header_line, max_size=4)))
    for _ in range(draw(st.integers(0, 6))):
        out.append(draw(st.sampled_from(SECTION_LINES)) + "\n")
        out.extend(x + "\n" for x in draw(st.lists(body_line, max_size=4)))
    return "".join(out)


def check_parse(text: str) -> None:
    try:
        defs = parse(text, filename="fuzz.def")
    except BuildError as e:
        assert re.match(r"fuzz\.def:\d+: \S", str(e)), str(e)
        return
    for d in defs:
        for w in d.warnings:
            assert re.match(r"fuzz\.def:\d+: ", w), w
        d.files, d.files_from, d.apps, d.labels, d.arguments, d.post  # noqa: B018
        try:
            d.validate()
        except BuildError as e:
            assert re.match(r"fuzz\.def:\d+: Bootstrap: \S+ is not supported by yurt yet", str(e))
    again = parse(to_text(defs), filename="fuzz.def")
    assert again == defs
    assert to_text(again) == to_text(defs)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(deffile_texts())
def test_fuzz_parse_only_raises_build_errors_with_lines(text):
    check_parse(text)


@FUZZ
@given(plausible_definitions())
def test_fuzz_round_trip(text):
    check_parse(text)


@FUZZ
@given(st.text(max_size=200))
def test_fuzz_random_unicode(text):
    check_parse(text)
    check_parse("Bootstrap: docker\nFrom: x\n" + text)


# -- reading recipe files: hostile bytes are one BuildError with the line ------------------------


@pytest.mark.parametrize("data, message", [
    (b"Bootstrap: scratch\n%post\n  echo \xff\n", r":3: not UTF-8 text \(byte 0xff\)"),
    (b"Bootstrap: scratch\n%labels\n  A\x00 b\n", r":3: contains a NUL byte"),
])
def test_read_recipe_refuses_binary_recipes(tmp_path, data, message):
    from yurt.builder.executor import read_recipe

    path = tmp_path / "x.def"
    path.write_bytes(data)
    with pytest.raises(BuildError, match="the definition file " + re.escape(str(path)) + message):
        read_recipe(str(path), None, None, False)


def test_recipes_are_refused_when_oversized_instead_of_truncated(tmp_path):
    from yurt.builder.executor import RECIPE_LIMIT
    from yurt.readfile import read_text

    path = tmp_path / "Dockerfile"
    path.write_bytes(b"FROM scratch\n" + b"#" * RECIPE_LIMIT)
    with pytest.raises(BuildError, match=f"the Dockerfile {re.escape(str(path))} is larger than {RECIPE_LIMIT} bytes"):
        read_text(str(path), "the Dockerfile", RECIPE_LIMIT, BuildError)
    assert read_text(str(path), "x", RECIPE_LIMIT + 20, BuildError).startswith("FROM scratch\n")
