"""Bad command lines end in one ``yurt: error:`` line and a non-zero exit, never silently.

The known cases of issue 10 and the shapes that tests/integration/test_cli_fuzz.py found, each run
through ``yurt.cli.main`` in this process: every one of them fails while parsing or checking,
before anything is opened, pulled or launched.
"""

from __future__ import annotations

import os

import pytest

from yurt.cli import main
from yurt.errors import ImageError, UsageError, one_line, os_error_text
from yurt.readfile import read_file, text


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """``cli(*argv)`` -> (status, stdout, stderr lines), in a private HOME and cache."""
    for var in ("YURT_DEBUG", "YURT_QUIET", "YURT_BIND", "YURT_BINDPATH", "YURT_HELP"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("YURT_CACHEDIR", str(tmp_path / "cache"))
    monkeypatch.setenv("YURT_RUNTIMEDIR", str(tmp_path / "run"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sandbox").mkdir()

    def run(*argv: str) -> tuple[int, str, list[str]]:
        status = main(list(argv))
        out, err = capsys.readouterr()
        return status, out, err.splitlines()

    return run


def one_error(status: int, err: list[str]) -> str:
    assert status != 0
    assert len(err) == 1 and err[0].startswith("yurt: error: "), err
    return err[0]


@pytest.mark.parametrize("spec", [":", ",,,", ",", "a,,b", ":/mnt"])
def test_malformed_bind(cli, spec):
    status, _, err = cli("exec", "-B", spec, "sandbox", "true")
    assert "bad bind" in one_error(status, err)


def test_malformed_bind_in_the_environment(cli, monkeypatch):
    monkeypatch.setenv("YURT_BIND", ",,,")
    status, _, err = cli("exec", "sandbox", "true")
    assert "bad bind list ',,,'" in one_error(status, err)


@pytest.mark.parametrize("size", ["-1", "0", "1048577", "99999999999999999999"])
def test_writable_tmpfs_size_out_of_range(cli, size):
    status, _, err = cli("exec", "--writable-tmpfs-size", size, "sandbox", "true")
    assert "--writable-tmpfs-size" in one_error(status, err) and "out of range" in err[0]


@pytest.mark.parametrize("argv", [["--pids-limit", "0"], ["--pids-limit=-5"]])
def test_pids_limit_out_of_range(cli, argv):
    status, _, err = cli("exec", *argv, "sandbox", "true")
    assert "out of range" in one_error(status, err)


def test_srun_without_arguments(cli):
    status, out, err = cli("srun")
    assert "srun needs an image and a command" in one_error(status, err)
    assert out == ""


def test_srun_help_still_works(cli):
    status, out, _ = cli("srun", "--help")
    assert status == 0 and out.startswith("Usage: yurt srun")


@pytest.mark.parametrize("argv,message", [
    (["--mounts", ",,,", "--image", "x", "--", "true"], "bad bind list"),
    (["--image", "x", "--bind=:", "--", "true"], "bad bind"),
    (["--image", "x", "--exec-writable-tmpfs-size=-1", "--", "true"], "out of range"),
    (["--yurt", "'unbalanced", "--image", "x", "--", "true"], "--yurt"),
    (["--yurt", "", "--image", "x", "--", "true"], "--yurt needs a command"),
])
def test_srun_checks_exec_options_before_submitting(cli, argv, message):
    status, _, err = cli("srun", *argv)
    assert message in one_error(status, err)


def test_overlay_missing_names_the_path(cli):
    status, _, err = cli("exec", "--overlay", "/nonexistent", "sandbox", "true")
    line = one_error(status, err)
    assert "overlay /nonexistent" in line and "No such file or directory" in line


def test_overlay_not_a_directory(cli, tmp_path):
    (tmp_path / "file").write_text("x")
    status, _, err = cli("exec", "--overlay", "file", "sandbox", "true")
    assert "overlay file is not a directory" in one_error(status, err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_overlay_not_writable(cli, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    status, _, err = cli("exec", "--overlay", str(ro), "sandbox", "true")
    assert "is not writable by you" in one_error(status, err) and f"{ro}:ro" in err[0]


@pytest.mark.parametrize("spec", ["", "a:b:c", "dir:rx", ":ro"])
def test_overlay_malformed(cli, spec):
    status, _, err = cli("exec", "--overlay", spec, "sandbox", "true")
    assert "overlay" in one_error(status, err)


@pytest.mark.parametrize("name", ["a b", "x" * 65, "-x", "caf\u00e9", "\udcce"])
def test_bad_hostname(cli, name):
    status, _, err = cli("exec", "--hostname", name, "sandbox", "true")
    assert "bad --hostname" in one_error(status, err)


def test_control_characters_stay_on_one_line(cli):
    status, _, err = cli("config", "show", "--x\r\ny\x1b[31m")
    line = one_error(status, err)
    assert "\\r\\ny\\x1b[31m" in line


def test_one_line():
    assert one_line("plain é中") == "plain é中"
    assert one_line("a\nb\tc\x1b\u2028\udcff") == "a\\nb\\tc\\x1b\\u2028\\udcff"


def test_os_error_text_names_the_path():
    assert os_error_text(PermissionError(13, "Permission denied", "/x/upper")) == "Permission denied: /x/upper"
    assert os_error_text(OSError(18, "Invalid cross-device link", "/a", None, "/b")) == \
        "Invalid cross-device link: /a -> /b"
    assert os_error_text(OSError(5, "Input/output error")) == "Input/output error"


@pytest.mark.parametrize("argv", [["version", "extra"], ["version", "--bogus"], ["help", "nope"],
                                  ["help", "exec", "extra"], ["help", "cache", "nope"], ["help", "--bogus"]])
def test_version_and_help_take_no_stray_arguments(cli, argv):
    status, _, err = cli(*argv)
    one_error(status, err)


@pytest.mark.parametrize("argv,usage", [(["help", "cache", "clean"], "Usage: yurt cache clean"),
                                        (["help", "instance", "start"], "Usage: yurt instance start"),
                                        (["help", "help"], "Usage: yurt [--debug]"),
                                        (["version", "--help"], "Usage: yurt version")])
def test_help_for_subcommands(cli, argv, usage):
    status, out, _ = cli(*argv)
    assert status == 0 and out.startswith(usage)


def test_yurt_help_variable_does_not_hide_errors(cli, monkeypatch):
    monkeypatch.setenv("YURT_HELP", "1")
    status, _, err = cli("exec")
    assert "exec needs an image" in one_error(status, err)


@pytest.mark.parametrize("argv,message", [
    (["registry"], "registry needs an action"),
    (["registry", "list", "extra"], "unexpected argument"),
    (["registry", "nope", "host"], "unknown registry action"),
    (["registry", "login"], "needs one HOST"),
    (["registry", "login", "https:///"], "no registry host"),
    (["registry", "login", "127.0.0.1:9"], "standard input is not a terminal"),
    (["registry", "login", "--password-stdin", "127.0.0.1:9"], "--password-stdin needs --username"),
])
def test_registry_usage(cli, monkeypatch, argv, message):
    monkeypatch.setattr("sys.stdin", open(os.devnull))
    status, _, err = cli(*argv)
    assert message in one_error(status, err)


def test_registry_login_empty_password_on_stdin(cli, monkeypatch):
    monkeypatch.setattr("sys.stdin", open(os.devnull))
    status, _, err = cli("registry", "login", "-u", "me", "--password-stdin", "127.0.0.1:9")
    assert "--password-stdin: standard input is empty" in one_error(status, err)


@pytest.mark.parametrize("argv,message", [
    (["instance", "stop", "--all", "x"], "names or --all, not both"),
    (["instance", "stop", "-s", "NOPE", "-F", "x"], "unknown signal"),
    (["instance", "stop", "-s", "", "x"], "no instance named x"),  # empty: the default, TERM
    (["instance", "stop", "-s", "\u0663", "x"], "unknown signal"),
    (["instance", "stop", "-t", "-1", "x"], "out of range"),
    (["cache", "clean", "--days", "-1"], "out of range"),
])
def test_instance_and_cache_values(cli, argv, message):
    status, _, err = cli(*argv)
    assert message in one_error(status, err)


def test_convert_latin1_names_the_byte(cli, tmp_path):
    (tmp_path / "latin1.def").write_bytes(b"Bootstrap: scratch\n%labels\n  Caf\xe9\n")
    status, _, err = cli("convert", "latin1.def")
    assert "latin1.def:3: not UTF-8 text (byte 0xe9)" in one_error(status, err)


def test_convert_fifo_does_not_hang(cli, tmp_path):
    os.mkfifo(tmp_path / "fifo")
    status, _, err = cli("convert", "fifo")  # no writer: read as empty, which is no Dockerfile or definition
    one_error(status, err)


def test_pull_of_a_fifo_archive_does_not_hang(cli, tmp_path):
    os.mkfifo(tmp_path / "fifo")
    status, _, err = cli("pull", "out.sif", "oci-archive:fifo")
    assert "not a regular file" in one_error(status, err)


def test_read_file_bounds(tmp_path):
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(1 << 40)  # sparse
    with pytest.raises(UsageError, match="larger than 1048576 bytes"):
        read_file(str(big), "the file", 1 << 20)
    with pytest.raises(ImageError, match="larger than 65536 bytes"):
        read_file("/dev/zero", "the file", 1 << 16, ImageError)
    with pytest.raises(UsageError, match="it is a directory"):
        read_file(str(tmp_path), "the file", 100)
    with pytest.raises(UsageError, match="No such file"):
        read_file(str(tmp_path / "none"), "the file", 100)
    os.mkfifo(tmp_path / "fifo")
    assert read_file(str(tmp_path / "fifo"), "the file", 100) == b""  # no writer: empty, at once
    r, w = os.pipe()
    os.write(w, b"A=1\n")
    os.close(w)
    assert read_file(f"/proc/self/fd/{r}", "--env-file", 100) == b"A=1\n"  # `--env-file <(cmd)`
    os.close(r)


def test_read_file_nofollow(tmp_path):
    """``nofollow``: for files yurt looks for itself (apt's sources): no symlink, regular files only."""
    (tmp_path / "real").write_bytes(b"x")
    os.symlink("real", tmp_path / "link")
    assert read_file(str(tmp_path / "link"), "", 10) == b"x"
    with pytest.raises(UsageError, match="cannot read"):
        read_file(str(tmp_path / "link"), "", 10, nofollow=True)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UsageError, match="not a regular file"):
        read_file(str(tmp_path / "fifo"), "", 10, nofollow=True)


def test_text_names_the_line_and_the_bad_byte():
    assert text(b"\xef\xbb\xbfok", "f", "the file") == "ok"
    with pytest.raises(UsageError, match=r"^the file f:2: not UTF-8 text \(byte 0xff\)"):
        text(b"a\n\xff", "f", "the file")
    with pytest.raises(UsageError, match=r"^f:3: contains a NUL byte"):
        text(b"a\n\nb\x00", "f", "")
