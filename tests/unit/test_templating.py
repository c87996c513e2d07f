"""{{ VAR }} templating: sources and their priority, comments, nested defaults, cycles, stages, errors, fuzzing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yurt.builder.deffile import parse
from yurt.builder.templating import parse_arg_file, parse_build_args, render
from yurt.errors import BuildError, UsageError

CORPUS = Path(__file__).parent / "corpus" / "deffiles"
HEAD = "Bootstrap: docker\nFrom: alpine\n"


def out(text: str, build_args: dict | None = None, arg_file: dict | None = None, **kw) -> str:
    rendered, warnings = render(text, build_args or {}, arg_file or {}, **kw)
    assert warnings == []
    return rendered


def error(text: str, build_args: dict | None = None, arg_file: dict | None = None, **kw) -> str:
    with pytest.raises(BuildError) as e:
        render(text, build_args or {}, arg_file or {}, filename="t.def", **kw)
    return str(e.value)


def test_text_without_templates_is_unchanged():
    text = HEAD + "%post\n  echo '{ not a template }' {{ }} {{a-b}} {{ two words }}\r\n"
    assert out(text) == text


def test_spacing_variants():
    text = HEAD + "%post\necho {{V}} {{ V }} {{   V\t}}\n"
    assert out(text, {"V": "x"}) == HEAD + "%post\necho x x x\n"


def test_priority_build_arg_then_file_then_defaults():
    text = HEAD + "%arguments\nA=default-a\nB=default-b\nC=default-c\n%post\necho {{ A }} {{ B }} {{ C }}\n"
    rendered = out(text, {"A": "cli"}, {"A": "file-a", "B": "file-b"})
    assert rendered.endswith("%post\necho cli file-b default-c\n")


def test_header_values_are_templated():
    text = "Bootstrap: docker\nFrom: ubuntu:{{ VERSION }}\n%arguments\n  VERSION=22.04\n"
    assert parse(out(text))[0].source == "ubuntu:22.04"
    assert parse(out(text, {"VERSION": "24.04"}))[0].source == "ubuntu:24.04"


def test_comment_lines_are_skipped_but_shebangs_are_not():
    text = HEAD + "%runscript\n#!{{ SHELL }}\n  # {{ UNDEFINED }} stays\n#{{ ALSO }}\necho {{ SHELL }} # {{ SHELL }}\n"
    rendered = out(text, {"SHELL": "/bin/bash"})
    assert rendered == HEAD + (
        "%runscript\n#!/bin/bash\n  # {{ UNDEFINED }} stays\n#{{ ALSO }}\necho /bin/bash # /bin/bash\n"
    )


def test_nested_defaults_resolve_recursively():
    text = load("arguments_templated.def")
    rendered = out(text)
    d = parse(rendered)[0]
    assert d.source == "ubuntu:22.04"
    assert "apt-get install -y python3 python3-pip" in d.post
    assert "mkdir -p /opt/mytool-2.1" in d.post
    assert d.labels == {"Version": "2.1"}
    assert "# {{ NOT_DEFINED }} in a comment is left alone" in d.post
    # a build argument overrides a default used inside another default, and is used as it is
    rendered = out(text, {"APP": "{{ x }}", "UBUNTU_VERSION": "24.04"})
    assert "mkdir -p /opt/{{ x }}-2.1" in rendered
    assert parse(rendered)[0].source == "ubuntu:24.04"


def test_deep_chain():
    lines = [f"V{i}={{{{ V{i + 1} }}}}x" for i in range(40)] + ["V40=end"]
    text = HEAD + "%arguments\n" + "\n".join(lines) + "\n%post\necho {{ V0 }}\n"
    assert out(text).endswith("echo end" + "x" * 40 + "\n")


def test_undefined_variable_names_it_and_its_line():
    message = error(HEAD + "%post\necho ok\necho {{ NOPE }}\n")
    assert message.startswith("t.def:5: build argument {{ NOPE }} is not defined: pass --build-arg NOPE=VALUE")


def test_undefined_variable_inside_a_default_names_the_default_line():
    text = HEAD + "%arguments\n  A=1\n  B=x-{{ MISSING }}\n%post\necho\n"
    assert error(text).startswith("t.def:5: build argument {{ MISSING }} in the default of B is not defined")
    # (the %arguments lines are templated too, so this fails even though nothing uses B)


def test_undefined_after_crlf_lines_has_the_right_line():
    text = "Bootstrap: docker\r\nFrom: alpine\r\n\r\n%post\r\n\r\necho {{ X }}\r\n"
    assert error(text).startswith("t.def:6: ")


def test_cycle_in_arguments():
    text = HEAD + "%arguments\nA={{ B }}\nB={{ C }}\nC={{ A }}\n%post\necho\n"
    message = error(text)
    assert message == "t.def:6: %arguments: the defaults refer to each other in a cycle: A -> B -> C -> A"


def test_self_reference_is_a_cycle():
    message = error(HEAD + "%arguments\nA=x{{ A }}\n%post\necho {{ A }}\n")
    assert message == "t.def:4: %arguments: the defaults refer to each other in a cycle: A -> A"


def test_a_build_arg_breaks_a_cycle():
    text = HEAD + "%arguments\nA={{ B }}\nB={{ A }}\n%post\necho {{ A }}\n"
    assert out(text, {"B": "b"}).endswith("%arguments\nA=b\nB=b\n%post\necho b\n")


def test_exponential_growth_is_refused():
    lines = [f"V{i}={{{{ V{i + 1} }}}}{{{{ V{i + 1} }}}}" for i in range(30)] + ["V30=xxxxxxxx"]
    text = HEAD + "%arguments\n" + "\n".join(lines) + "\n%post\necho {{ V0 }}\n"
    assert "grows beyond" in error(text)


def test_unused_build_args_are_errors_unless_warned():
    text = HEAD + "%post\necho {{ USED }}\n"
    message = error(text, {"USED": "1", "EXTRA": "2"}, {"FROMFILE": "3"})
    assert message.startswith("t.def:1: unused build argument(s): FROMFILE, EXTRA")
    rendered, warnings = render(
        text, {"USED": "1", "EXTRA": "2"}, {"FROMFILE": "3"}, warn_unused=True, filename="t.def"
    )
    assert rendered.endswith("echo 1\n")
    assert warnings == ["t.def:1: unused build argument FROMFILE", "t.def:1: unused build argument EXTRA"]


def test_a_build_arg_used_only_through_a_default_is_used():
    text = HEAD + "%arguments\nA=pre-{{ B }}\nB=b\n%post\necho {{ A }}\n"
    assert out(text, {"B": "cli"}).endswith("echo pre-cli\n")


def test_a_build_arg_used_only_in_a_comment_is_unused():
    assert "unused build argument(s): X" in error(HEAD + "%post\n# {{ X }}\n", {"X": "1"})


def test_defaults_belong_to_their_stage():
    text = (
        "Bootstrap: docker\nFrom: alpine\nStage: one\n%arguments\nA=1\n%post\necho {{ A }}\n"
        "Bootstrap: docker\nFrom: alpine\nStage: two\n%post\necho {{ A }}\n"
    )
    message = error(text)
    assert message.startswith("t.def:12: build argument {{ A }} is not defined")
    assert "the %arguments on line 5 belong to another stage" in message
    rendered = out(text, {"A": "both"})
    assert rendered.count("echo both") == 2
    one, two = parse(rendered)
    assert one.post == two.post == "echo both\n"


def test_each_stage_has_its_own_defaults():
    text = "Bootstrap: docker\nFrom: a:{{ T }}\n%arguments\nT=1\nBootstrap: docker\nFrom: b:{{ T }}\n%arguments\nT=2\n"
    assert [d.source for d in parse(out(text))] == ["a:1", "b:2"]


def test_malformed_arguments_lines_warn():
    rendered, warnings = render(
        HEAD + "%arguments\n  just words\n  =x\n  K=v\n%post\n{{ K }}\n", {}, {}, filename="t.def"
    )
    assert rendered.endswith("%post\nv\n")
    assert warnings == [
        "t.def:4: %arguments: skipping 'just words': not KEY=VALUE",
        "t.def:5: %arguments: skipping '=x': not KEY=VALUE",
    ]


def test_values_keep_equals_signs_and_later_lines_win():
    text = HEAD + "%arguments\nOPTS=--a=1 --b=2\nOPTS=--c=3\n%post\nrun {{ OPTS }}\n"
    assert out(text).endswith("run --c=3\n")


def test_parse_arg_file():
    values, warnings = parse_arg_file(
        "# comment\n\nA=1\n B = two words \nC=\nnonsense\nA=again\r\n", filename="args.txt"
    )
    assert values == {"A": "again", "B": "two words", "C": ""}
    assert warnings == ["args.txt:6: skipping 'nonsense': not KEY=VALUE"]


def test_parse_build_args():
    assert parse_build_args(["A=1", "B=x=y", "A=2", "E="]) == {"A": "2", "B": "x=y", "E": ""}
    with pytest.raises(UsageError, match="expected KEY=VALUE"):
        parse_build_args(["novalue"])


def load(name: str) -> str:
    return (CORPUS / name).read_bytes().decode("utf-8")


@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.glob("*.def")))
def test_corpus_renders(name):
    text = load(name)
    if name == "hpc_openmpi.def":
        rendered = out(text)
        assert "export OMPI_VERSION=4.1.6" in rendered
    elif "{{" not in text:
        assert out(text) == text
    parse(render(text, {}, {})[0])


# -- fuzzing ------------------------------------------------------------------------------

PIECES = [
    "{{ A }}",
    "{{B}}",
    "{{ C }}",
    "{{ UNDEF }}",
    "{{",
    "}}",
    "{{ }}",
    "A=1",
    "A={{ B }}",
    "B={{ A }}",
    "B=2",
    "C={{ A }}{{ B }}",
    "C={{ C }}",
    "%arguments",
    "%post",
    "%ARGUMENTS x",
    "Bootstrap: docker",
    "bootstrap: x",
    "# {{ A }}",
    "#!{{ A }}",
    "  # c",
    "=",
    "K",
    "echo",
    " ",
    "\t",
    "é",
    "\x00",
]
piece = st.one_of(st.sampled_from(PIECES), st.text(max_size=6))
args = st.dictionaries(
    st.sampled_from(["A", "B", "C", "D", "é", ""]), st.sampled_from(["1", "{{ A }}", "", "x y"]), max_size=3
)


@st.composite
def template_texts(draw):
    parts = draw(st.lists(st.tuples(piece, st.sampled_from(["", " ", "\n", "\r\n"])), max_size=30))
    return "".join(a + b for a, b in parts)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(template_texts(), args, args, st.booleans())
def test_fuzz_render_only_raises_build_errors_with_lines(text, build_args, arg_file, warn_unused):
    try:
        rendered, warnings = render(text, build_args, arg_file, warn_unused=warn_unused, filename="f.def")
    except BuildError as e:
        assert re.match(r"f\.def:\d+: \S", str(e)), str(e)
        return
    assert isinstance(rendered, str)
    for w in warnings:
        assert re.match(r"f\.def:\d+: ", w), w
    if "{{" not in text and not build_args and not arg_file:
        assert rendered == text
