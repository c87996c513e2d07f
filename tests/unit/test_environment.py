"""The container environment as plain data (Apptainer rules)."""

from __future__ import annotations

import os
import shlex

import pytest

from yurt.errors import UsageError
from yurt.runtime.environment import (
    DEFAULT_PATH,
    apply_path_edits,
    build_environment,
    env_script_wrapper,
    injected_from_host,
    parse_env_args,
    parse_env_file,
)

HOST = {
    "PATH": "/host/bin",
    "LD_LIBRARY_PATH": "/host/lib",
    "HOME": "/home/host",
    "USER": "alice",
    "LOGNAME": "alice",
    "PWD": "/work",
    "TERM": "xterm-256color",
    "LANG": "en_US.UTF-8",
    "SLURM_JOB_ID": "42",
    "OMP_NUM_THREADS": "8",
    "http_proxy": "http://proxy:3128",
    "HTTPS_PROXY": "http://proxy:3129",
    "YURT_BIND": "/data",
    "YURTENV_FOO": "injected",
    "APPTAINER_BIND": "/x",
    "APPTAINERENV_BAR": "bar",
    "SINGULARITY_CACHEDIR": "/c",
    "SINGULARITYENV_BAZ": "baz",
}


def build(host=None, **kw):
    kw.setdefault("home", "/home/alice")
    return build_environment(HOST if host is None else host, **kw)


# ------------------------------------------------------------------ build_environment


def test_host_passthrough():
    env, _ = build()
    assert env["SLURM_JOB_ID"] == "42"
    assert env["OMP_NUM_THREADS"] == "8"
    assert env["LANG"] == "en_US.UTF-8"
    assert env["USER"] == "alice"


def test_path_ld_library_path_home_blocked():
    env, _ = build()
    assert env["PATH"] == DEFAULT_PATH
    assert "LD_LIBRARY_PATH" not in env
    assert env["HOME"] == "/home/alice"


@pytest.mark.parametrize("key", ["YURT_BIND", "YURTENV_FOO", "APPTAINER_BIND", "APPTAINERENV_BAR",
                                 "SINGULARITY_CACHEDIR", "SINGULARITYENV_BAZ"])
def test_runtime_variables_filtered(key):
    env, _ = build()
    assert key not in env


def test_injected_not_applied_by_build_environment_itself():
    # YURTENV_* in host is only filtered here; injected_from_host turns it into inject=
    env, late = build()
    assert "FOO" not in env
    assert late == {}


def test_cleanenv_keeps_only_listed():
    env, _ = build(cleanenv=True)
    assert env == {
        "TERM": "xterm-256color",
        "USER": "alice",
        "LOGNAME": "alice",
        "PWD": "/work",
        "LANG": "C",
        "http_proxy": "http://proxy:3128",
        "HTTPS_PROXY": "http://proxy:3129",
        "PATH": DEFAULT_PATH,
        "HOME": "/home/alice",
    }


def test_cleanenv_with_minimal_host():
    env, _ = build({"FOO": "1"}, cleanenv=True)
    assert env == {"LANG": "C", "PATH": DEFAULT_PATH, "HOME": "/home/alice"}


@pytest.mark.parametrize("key", ["TERM", "http_proxy", "https_proxy", "ftp_proxy", "no_proxy", "all_proxy",
                                 "HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY"])
def test_term_and_proxies_always_kept(key):
    env, _ = build({key: "v"}, cleanenv=True)
    assert env[key] == "v"


def test_image_env_overrides_host():
    env, _ = build(image_env={"LANG": "C.UTF-8", "PATH": "/opt/conda/bin:/usr/bin", "NEW": "1"})
    assert env["LANG"] == "C.UTF-8"
    assert env["PATH"] == "/opt/conda/bin:/usr/bin"
    assert env["NEW"] == "1"


def test_image_env_overrides_home():
    env, _ = build(image_env={"HOME": "/image/home"})
    assert env["HOME"] == "/image/home"


def test_injected_overrides_image_and_host():
    env, late = build(image_env={"LANG": "C.UTF-8", "X": "image"}, inject={"X": "inj", "SLURM_JOB_ID": "7"})
    assert env["X"] == "inj"
    assert env["SLURM_JOB_ID"] == "7"
    assert late == {"X": "inj", "SLURM_JOB_ID": "7"}


def test_injected_path_replaces_path():
    env, late = build(image_env={"PATH": "/img/bin"}, inject={"PATH": "/mine/bin"})
    assert env["PATH"] == "/mine/bin"
    assert late["PATH"] == "/mine/bin"


def test_prepend_append_path():
    env, late = build(image_env={"PATH": "/img/bin"}, inject={"PREPEND_PATH": "/pre", "APPEND_PATH": "/app"})
    assert env["PATH"] == "/pre:/img/bin:/app"
    assert "PREPEND_PATH" not in env and "APPEND_PATH" not in env
    assert late == {"PREPEND_PATH": "/pre", "APPEND_PATH": "/app"}


def test_prepend_applies_to_injected_path():
    env, _ = build(inject={"PATH": "/a", "PREPEND_PATH": "/p"})
    assert env["PATH"] == "/p:/a"


def test_empty_path_edits_ignored():
    env, _ = build(inject={"PREPEND_PATH": "", "APPEND_PATH": ""})
    assert env["PATH"] == DEFAULT_PATH


def test_apply_path_edits():
    assert apply_path_edits("/b", {}) == "/b"
    assert apply_path_edits("/b", {"PREPEND_PATH": "/a"}) == "/a:/b"
    assert apply_path_edits("/b", {"APPEND_PATH": "/c"}) == "/b:/c"
    assert apply_path_edits("/b", {"PREPEND_PATH": "/a", "APPEND_PATH": "/c"}) == "/a:/b:/c"


def test_container_vars_win_and_are_late():
    cv = {"YURT_CONTAINER": "/img.sif", "APPTAINER_NAME": "img.sif"}
    env, late = build(inject={"YURT_CONTAINER": "nope"}, image_env={"APPTAINER_NAME": "x"}, container_vars=cv)
    assert env["YURT_CONTAINER"] == "/img.sif"
    assert env["APPTAINER_NAME"] == "img.sif"
    assert late["YURT_CONTAINER"] == "/img.sif"


def test_host_not_mutated():
    host = dict(HOST)
    build(host, cleanenv=False, image_env={"A": "1"}, inject={"B": "2"})
    assert host == HOST


# ------------------------------------------------------------------ injected_from_host


def test_injected_from_host_prefixes():
    assert injected_from_host(HOST) == {"FOO": "injected", "BAR": "bar", "BAZ": "baz"}


def test_injected_from_host_precedence():
    host = {"SINGULARITYENV_X": "s", "APPTAINERENV_X": "a", "YURTENV_X": "y"}
    assert injected_from_host(host) == {"X": "y"}
    host = {"YURTENV_X": "y", "APPTAINERENV_X": "a", "SINGULARITYENV_X": "s"}
    assert injected_from_host(host) == {"X": "y"}
    assert injected_from_host({"SINGULARITYENV_X": "s", "APPTAINERENV_X": "a"}) == {"X": "a"}


def test_injected_from_host_bare_prefix_ignored():
    assert injected_from_host({"YURTENV_": "x", "APPTAINERENV_": "y", "OTHER": "z"}) == {}


# ------------------------------------------------------------------ parse_env_file


def write(tmp_path, text):
    p = tmp_path / "env"
    p.write_text(text)
    return str(p)


def test_env_file_whitespace_and_export(tmp_path):
    env = parse_env_file(write(tmp_path, "   # indented comment\n\n  H=spaced  \nexport   C=x\n_I=under\n"))
    assert env == {"H": "spaced", "C": "x", "_I": "under"}


def test_env_file_basic_values(tmp_path):
    env = parse_env_file(write(tmp_path, '# c\nA=1\nexport B=two\nD="hello  world"\nE=\'x y\'\nF=\nG=a=b\n'))
    assert env == {"A": "1", "B": "two", "D": "hello  world", "E": "x y", "F": "", "G": "a=b"}


def test_env_file_later_line_wins(tmp_path):
    assert parse_env_file(write(tmp_path, "A=1\nA=2\n")) == {"A": "2"}


@pytest.mark.parametrize("bad", ["garbage", "1A=x", "A-B=x", "=x", 'A="unbalanced'])
def test_env_file_bad_line(tmp_path, bad):
    path = write(tmp_path, f"OK=1\n# comment\n{bad}\n")
    with pytest.raises(UsageError) as e:
        parse_env_file(path)
    assert f"{path}:3" in str(e.value)


@pytest.mark.parametrize("data, message", [
    (b"OK=1\nA=\xff\xfe\n", ":2: not UTF-8 text (byte 0xff)"),
    (b"OK=1\nB=2\nA=x\x00y\n", ":3: contains a NUL byte"),
])
def test_env_file_binary_content_is_one_usage_error(tmp_path, data, message):
    path = tmp_path / "env"
    path.write_bytes(data)
    with pytest.raises(UsageError) as e:
        parse_env_file(str(path))
    assert e.value.message == f"--env-file {path}{message}"


def test_env_file_too_large(tmp_path):
    path = tmp_path / "env"
    with open(path, "wb") as f:
        f.truncate(100 << 20)
    with pytest.raises(UsageError, match="is larger than 4194304 bytes"):
        parse_env_file(str(path))


def test_env_file_from_a_pipe(tmp_path):
    r, w = os.pipe()
    os.write(w, b"P=piped\n")
    os.close(w)
    try:
        assert parse_env_file(f"/proc/self/fd/{r}") == {"P": "piped"}
    finally:
        os.close(r)


def test_env_file_missing(tmp_path):
    with pytest.raises(UsageError) as e:
        parse_env_file(str(tmp_path / "missing"))
    assert "missing" in str(e.value)


# ------------------------------------------------------------------ parse_env_args


def test_env_args_single_and_repeated():
    assert parse_env_args(["A=1", "B=2"]) == {"A": "1", "B": "2"}
    assert parse_env_args(["A=1", "A=2"]) == {"A": "2"}


def test_env_args_comma_list():
    assert parse_env_args(["A=1,B=2"]) == {"A": "1", "B": "2"}


def test_env_args_value_with_commas_stays_together():
    assert parse_env_args(["A=x,y"]) == {"A": "x,y"}
    assert parse_env_args(["A=x,y,B=2,C=z,w"]) == {"A": "x,y", "B": "2", "C": "z,w"}


def test_env_args_comma_before_invalid_name_stays():
    assert parse_env_args(["A=x,1B=2"]) == {"A": "x,1B=2"}


def test_env_args_empty_and_equals_in_value():
    assert parse_env_args(["A=", "B=c=d"]) == {"A": "", "B": "c=d"}


@pytest.mark.parametrize("bad", ["A", "=x", "1A=x", "A B=x", ""])
def test_env_args_bad(bad):
    with pytest.raises(UsageError):
        parse_env_args([bad])


# ------------------------------------------------------------------ env_script_wrapper


def export_lines(text):
    return [line for line in text.splitlines() if line.startswith("export ")]


def test_wrapper_sources_env_scripts_and_execs():
    text = env_script_wrapper({})
    assert "/.singularity.d/env/*.sh" in text
    assert text.splitlines()[-1] == 'exec "$@"'
    assert export_lines(text) == []


@pytest.mark.parametrize("value", ["'; rm -rf /", "a b", "$(id)", "`id`", '"quoted"', "x\ny", "", "*", "a'b"])
def test_wrapper_values_quoted_literally(value):
    text = env_script_wrapper({"K": value})
    statement = text[text.index("export K="):text.index('\nexec "$@"')]
    assert shlex.split(statement) == ["export", f"K={value}"]


def test_wrapper_injected_order_and_path_edits():
    text = env_script_wrapper({"A": "1", "PREPEND_PATH": "/p q", "APPEND_PATH": "/a;b", "B": "2"})
    lines = export_lines(text)
    assert [shlex.split(line) for line in lines] == [
        ["export", "A=1"],
        ["export", "PATH=/p q:$PATH"],
        ["export", "PATH=$PATH:/a;b"],
        ["export", "B=2"],
    ]
    # $PATH is expanded by the shell, the injected parts are single-quoted literals
    assert '"$PATH"' in lines[1] and "'/p q'" in lines[1]
    assert '"$PATH"' in lines[2] and "'/a;b'" in lines[2]
    # the source loop comes before the exports
    assert text.index("/.singularity.d/env") < text.index(lines[0])
