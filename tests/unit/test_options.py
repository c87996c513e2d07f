"""The tiny declarative option parser (yurt.cli.options)."""

from __future__ import annotations

import pytest

from yurt.cli.options import Flag, parse, usage
from yurt.errors import UsageError

FLAGS = [
    Flag("bind", "list", "B", "bind", "SPEC", env=("BINDPATH",)),
    Flag("home", "value", "H", "home", "SPEC"),
    Flag("no-home", help="no home"),
    Flag("pwd", "value", None, "cwd", "DIR", aliases=("cwd",)),
    Flag("contain", short="c"),
    Flag("containall", short="C"),
    Flag("pid", short="p"),
    Flag("ipc", short="i"),
    Flag("net", short="n"),
    Flag("fakeroot", short="f"),
    Flag("env", "list", None, "env", "K=V"),
    Flag("writable-tmpfs-size", "int", None, "size", "MIB", bounds=(1, 1 << 20)),
    Flag("help", short="h"),
]


def p(argv, *, stop=True, environ=None, flags=FLAGS):
    return parse(argv, flags, stop_at_positional=stop, environ={} if environ is None else environ)


def test_defaults():
    values, pos = p([])
    assert pos == []
    assert values == {
        "bind": [], "home": None, "no_home": False, "pwd": None, "contain": False, "containall": False,
        "pid": False, "ipc": False, "net": False, "fakeroot": False, "env": [], "writable_tmpfs_size": None,
        "help": False,
    }


def test_default_lists_not_shared():
    a, _ = p([])
    a["bind"].append("/x")
    b, _ = p([])
    assert b["bind"] == []


def test_long_flags():
    values, pos = p(["--contain", "--home", "/h", "--no-home", "img", "cmd"])
    assert values["contain"] and values["no_home"]
    assert values["home"] == "/h"
    assert pos == ["img", "cmd"]


def test_long_flag_inline_value():
    values, _ = p(["--home=/h:/x", "--bind=/a", "--writable-tmpfs-size=128", "--env=A=1"])
    assert values["home"] == "/h:/x"
    assert values["bind"] == ["/a"]
    assert values["writable_tmpfs_size"] == 128
    assert values["env"] == ["A=1"]


def test_inline_empty_value():
    assert p(["--home=", "img"])[0]["home"] == ""


@pytest.mark.parametrize("raw,expected", [("true", True), ("1", True), ("yes", True), ("ON", True),
                                          ("false", False), ("0", False), ("no", False), ("", False)])
def test_long_bool_with_value(raw, expected):
    assert p([f"--contain={raw}"])[0]["contain"] is expected


def test_long_bool_bad_value():
    with pytest.raises(UsageError):
        p(["--contain=maybe"])


def test_short_flags():
    values, pos = p(["-c", "-B", "/a", "-H", "/h", "img"])
    assert values["contain"] and values["bind"] == ["/a"] and values["home"] == "/h"
    assert pos == ["img"]


def test_short_attached_value():
    values, _ = p(["-B/a:/b", "-H/h"])
    assert values["bind"] == ["/a:/b"] and values["home"] == "/h"


def test_bundled_short_flags():
    values, _ = p(["-cpn", "img"])
    assert values["contain"] and values["pid"] and values["net"]
    assert not values["ipc"]


def test_bundled_short_flags_ending_with_value_flag():
    values, pos = p(["-cB", "/a", "img"])
    assert values["contain"] and values["bind"] == ["/a"]
    assert pos == ["img"]
    values, pos = p(["-cB/a", "img"])
    assert values["contain"] and values["bind"] == ["/a"]
    assert pos == ["img"]


def test_list_flags_repeatable():
    values, _ = p(["-B", "/a", "--bind", "/b", "-B/c", "--bind=/d,/e"])
    assert values["bind"] == ["/a", "/b", "/c", "/d,/e"]


def test_int_flag():
    assert p(["--writable-tmpfs-size", "64"])[0]["writable_tmpfs_size"] == 64


def test_int_flag_bad():
    with pytest.raises(UsageError):
        p(["--writable-tmpfs-size", "big"])


@pytest.mark.parametrize("raw", ["-1", "0", str((1 << 20) + 1), str(1 << 70)])
def test_int_flag_out_of_range(raw):
    """--writable-tmpfs-size -1 was accepted: every int flag has bounds, checked by the parser."""
    with pytest.raises(UsageError, match=r"out of range \(give 1 to 1048576 \(MIB\)\)"):
        p(["--writable-tmpfs-size", raw])
    with pytest.raises(UsageError, match="YURT_WRITABLE_TMPFS_SIZE="):
        p([], environ={"YURT_WRITABLE_TMPFS_SIZE": raw})


@pytest.mark.parametrize("raw", ["1_000", "\u0663", "1e3", "0x10", "1.5", "", " ", "+", "--1"])
def test_int_flag_only_ascii_digits(raw):
    """int() would take 1_000 and an Arabic-Indic three; a flag takes plain digits."""
    with pytest.raises(UsageError, match="not a whole number"):
        p([f"--writable-tmpfs-size={raw}"])


@pytest.mark.parametrize("raw,value", [("1", 1), (" 64 ", 64), ("+2", 2), ("1048576", 1 << 20)])
def test_int_flag_in_range(raw, value):
    assert p([f"--writable-tmpfs-size={raw}"])[0]["writable_tmpfs_size"] == value


def test_int_flag_needs_bounds():
    with pytest.raises(ValueError):
        Flag("n", "int")
    with pytest.raises(ValueError):
        Flag("n", "value", bounds=(0, 1))


def test_help_is_not_an_environment_variable():
    """YURT_HELP=1 in a job script must not turn every yurt command into its usage text."""
    assert p([], environ={"YURT_HELP": "1"})[0]["help"] is False
    assert Flag("help").env_names() == ()


def test_value_flag_takes_next_even_if_dashed():
    values, _ = p(["--home", "-c"])
    assert values["home"] == "-c" and not values["contain"]


def test_stop_at_positional():
    values, pos = p(["-c", "img", "ls", "-la", "--contain", "-B", "/x", "--", "--nope"])
    assert values["contain"] is True
    assert values["bind"] == []
    assert pos == ["img", "ls", "-la", "--contain", "-B", "/x", "--", "--nope"]


def test_no_stop_at_positional():
    values, pos = p(["img", "-c", "out", "--bind", "/a"], stop=False)
    assert values["contain"] and values["bind"] == ["/a"]
    assert pos == ["img", "out"]


def test_double_dash():
    values, pos = p(["-c", "--", "-p", "--bind", "x"])
    assert values["contain"] and not values["pid"] and values["bind"] == []
    assert pos == ["-p", "--bind", "x"]
    values, pos = p(["--", "--", "x"], stop=False)
    assert pos == ["--", "x"]


def test_lone_dash_is_positional():
    assert p(["-", "x"])[1] == ["-", "x"]


@pytest.mark.parametrize("argv", [["--nope"], ["-z"], ["-cz"], ["--no-home-dir"], ["--bin", "/a"]])
def test_unknown_option(argv):
    with pytest.raises(UsageError):
        p(argv)


def test_unknown_option_message():
    with pytest.raises(UsageError) as e:
        p(["--frob=1"])
    assert "--frob" in str(e.value)


@pytest.mark.parametrize("argv", [["--home"], ["-H"], ["-cB"], ["--writable-tmpfs-size"], ["-c", "--bind"]])
def test_missing_value(argv):
    with pytest.raises(UsageError) as e:
        p(argv)
    assert "needs a value" in str(e.value)


def test_alias():
    assert p(["--cwd", "/w"])[0]["pwd"] == "/w"
    assert p(["--cwd=/w"])[0]["pwd"] == "/w"
    assert p(["--pwd", "/v"])[0]["pwd"] == "/v"


@pytest.mark.parametrize("num", ["-1", "-5", "-0.5", "-1e3"])
def test_negative_numbers_are_positionals(num):
    values, pos = p([num, "x"], stop=False)
    assert pos == [num, "x"]
    values, pos = p(["img", num])
    assert pos == ["img", num]


def test_negative_number_as_value():
    """-3 is the option's value (then out of its range), not three short options."""
    with pytest.raises(UsageError, match="'-3' is out of range"):
        p(["--writable-tmpfs-size", "-3"])
    lenient = [Flag("offset", "int", bounds=(-10, 10))]
    assert p(["--offset", "-3"], flags=lenient)[0]["offset"] == -3


def test_bundle_spelling_inf_is_flags():
    values, pos = p(["-inf", "img", "true"])
    assert values["ipc"] and values["net"] and values["fakeroot"]
    assert pos == ["img", "true"]


# ------------------------------------------------------------------ environment binding


@pytest.mark.parametrize("raw,expected", [("true", True), ("1", True), ("false", False), ("0", False),
                                          ("TRUE", True), ("", False)])
def test_env_bool(raw, expected):
    assert p([], environ={"YURT_CONTAIN": raw})[0]["contain"] is expected


def test_env_bool_bad():
    with pytest.raises(UsageError) as e:
        p([], environ={"YURT_CONTAIN": "perhaps"})
    assert "YURT_CONTAIN" in str(e.value)


def test_env_names_use_underscores():
    values, _ = p([], environ={"YURT_NO_HOME": "1", "YURT_WRITABLE_TMPFS_SIZE": "32"})
    assert values["no_home"] is True
    assert values["writable_tmpfs_size"] == 32


def test_env_int_bad():
    with pytest.raises(UsageError):
        p([], environ={"YURT_WRITABLE_TMPFS_SIZE": "lots"})


def test_env_value():
    assert p([], environ={"YURT_HOME": "/h"})[0]["home"] == "/h"


def test_env_list():
    assert p([], environ={"YURT_BIND": "/a,/b"})[0]["bind"] == ["/a,/b"]


def test_env_extra_names():
    assert p([], environ={"YURT_BINDPATH": "/x"})[0]["bind"] == ["/x"]
    assert p([], environ={"YURT_BIND": "/a", "YURT_BINDPATH": "/x"})[0]["bind"] == ["/a"]
    assert p([], environ={"APPTAINER_BINDPATH": "/y"})[0]["bind"] == ["/y"]
    assert p([], environ={"SINGULARITY_BIND": "/s"})[0]["bind"] == ["/s"]


def test_environment_precedence_yurt_then_apptainer_then_singularity(capsys):
    """YURT_ wins, then APPTAINER_, then SINGULARITY_ (each with every key of the flag), and one warning
    line when set values disagree; values that agree (1 and true) say nothing."""
    env = {"SINGULARITY_CONTAIN": "1", "APPTAINER_CONTAIN": "true"}
    assert p([], environ=env)[0]["contain"] is True
    assert capsys.readouterr().err == ""
    env = {"SINGULARITY_HOME": "/s", "APPTAINER_HOME": "/a", "YURT_HOME": "/y"}
    assert p([], environ=env)[0]["home"] == "/y"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("yurt: warning: YURT_HOME and APPTAINER_HOME differ")
    assert p([], environ={"SINGULARITY_HOME": "/s", "APPTAINER_HOME": "/a"})[0]["home"] == "/a"
    assert p([], environ={"SINGULARITY_HOME": "/s"})[0]["home"] == "/s"
    # BINDPATH is a key of --bind: APPTAINER_BINDPATH wins over SINGULARITY_BIND (prefix first)
    assert p([], environ={"SINGULARITY_BIND": "/s", "APPTAINER_BINDPATH": "/a"})[0]["bind"] == ["/a"]


def test_command_line_wins_over_environment():
    env = {"YURT_BIND": "/env", "YURT_HOME": "/envhome", "YURT_CONTAIN": "true", "YURT_PID": "true"}
    values, _ = p(["-B", "/cli", "--home=/clihome", "--contain=false"], environ=env)
    assert values["bind"] == ["/cli"]
    assert values["home"] == "/clihome"
    assert values["contain"] is False
    assert values["pid"] is True  # not on the command line: the environment applies


def test_environment_ignores_unrelated():
    values, _ = p([], environ={"YURTX_CONTAIN": "1", "CONTAIN": "1", "yurt_contain": "1"})
    assert values["contain"] is False


def test_environ_defaults_to_os_environ(monkeypatch):
    monkeypatch.setenv("YURT_NET", "1")
    values, _ = parse([], FLAGS, stop_at_positional=True)
    assert values["net"] is True


def test_flag_properties():
    f = Flag("writable-tmpfs-size", "int", env=("OTHER",), bounds=(1, 2))
    assert f.dest == "writable_tmpfs_size"
    assert f.env_names() == ("YURT_WRITABLE_TMPFS_SIZE", "YURT_OTHER", "APPTAINER_WRITABLE_TMPFS_SIZE",
                             "APPTAINER_OTHER", "SINGULARITY_WRITABLE_TMPFS_SIZE", "SINGULARITY_OTHER")
    assert Flag("name", "value", own_env=False, env=("PULL_NAME",)).env_names() == (
        "YURT_PULL_NAME", "APPTAINER_PULL_NAME", "SINGULARITY_PULL_NAME")
    assert f.default() is None
    assert Flag("x").default() is False


def test_usage_lists_flags():
    text = usage("exec", "IMAGE CMD", "Run a command.", FLAGS)
    assert text.startswith("Usage: yurt exec IMAGE CMD")
    assert "-B, --bind SPEC" in text
    assert "--no-home" in text
    assert "YURT_" in text


def test_real_action_flags_parse():
    from yurt.cli.actions import FLAGS as ACTION_FLAGS

    values, pos = parse(["-B", "/a", "--cwd", "/w", "-cp", "img.sif", "python", "-c", "print(1)"], ACTION_FLAGS,
                        stop_at_positional=True, environ={"YURT_BINDPATH": "/ignored"})
    assert values["bind"] == ["/a"]
    assert values["pwd"] == "/w"
    assert values["contain"] and values["pid"]
    assert pos == ["img.sif", "python", "-c", "print(1)"]
