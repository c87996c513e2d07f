"""``yurt completion bash|zsh|fish``: the scripts parse, and the shells really complete with them.

bash is always there; the zsh and fish checks run where those shells are installed
(scripts/install-system-deps installs both).
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from yurt.cli import COMMANDS, completion
from yurt.cli import main as yurt_main
from yurt.cli.completion_scripts import render, spellings, value_kind
from yurt.errors import UsageError


@pytest.fixture(scope="module")
def scripts(tmp_path_factory) -> dict[str, Path]:
    where = tmp_path_factory.mktemp("completion")
    out = {}
    for shell in completion.SHELLS:
        out[shell] = where / {"bash": "yurt.bash", "zsh": "_yurt", "fish": "yurt.fish"}[shell]
        out[shell].write_text(render(shell, *completion.contexts()))
    return out


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A directory to complete file names in."""
    (tmp_path / "image.sif").write_bytes(b"")
    (tmp_path / "notes.txt").write_bytes(b"")
    (tmp_path / "subdir").mkdir()
    return tmp_path


def test_command_prints_each_script(capsys):
    for shell in completion.SHELLS:
        assert yurt_main(["completion", shell]) == 0
        assert capsys.readouterr().out == render(shell, *completion.contexts())
    with pytest.raises(UsageError, match="bash, zsh or fish"):
        completion.main("completion", ["tcsh"], None)
    assert yurt_main(["completion"]) == 255
    assert "one shell" in capsys.readouterr().err


def test_every_command_and_subcommand_has_a_context():
    commands, contexts = completion.contexts()
    assert list(commands) == list(COMMANDS) and "completion" in commands
    assert set(COMMANDS) <= set(contexts)
    for cmd in ("instance", "cache", "registry", "config"):
        for sub in contexts[cmd].subcommands:
            assert f"{cmd} {sub}" in contexts
    assert set(contexts["instance"].subcommands) == {"start", "run", "list", "stop"}
    assert set(contexts["cache"].subcommands) == {"list", "clean"}
    assert set(contexts["registry"].subcommands) == {"login", "logout", "list"}


def _argv(key: str, flag, spelling: str) -> list[str]:
    argv = key.split() + [spelling]
    if flag.kind != "bool":
        argv.append("1")
    return argv + ["--help"]


def test_every_offered_option_is_accepted_by_its_command(capsys, monkeypatch):
    """What completion offers is what the command's parser takes: each option, with a value when it needs
    one, then --help, exits 0 (an option the command lacks would be 'unknown option')."""
    monkeypatch.setenv("YURT_QUIET", "0")  # yurt --quiet sets it for the commands it runs: not for later tests
    _, contexts = completion.contexts()
    checked = 0
    for key, ctx in contexts.items():
        if key in ("", "srun"):  # global options: below; srun's options go to srun, which is not run here
            continue
        for flag in ctx.flags:
            for spelling in spellings(flag):
                assert yurt_main(_argv(key, flag, spelling)) == 0, (key, spelling, capsys.readouterr().err)
                checked += 1
    capsys.readouterr()
    assert checked > 150
    for spelling in (s for f in completion.GLOBAL_FLAGS for s in spellings(f)):
        assert yurt_main([spelling, "version"]) == 0, spelling
    # and instance start refuses what it does not offer
    assert yurt_main(["instance", "start", "--sharens", "--help"]) == 255


def test_flags_with_fixed_values_and_paths():
    _, contexts = completion.contexts()
    by_name = {f.name: f for f in contexts["exec"].flags}
    assert by_name["mpi"].choices == ("hybrid", "host", "none") and value_kind(by_name["mpi"]) == "words"
    assert value_kind(by_name["bind"]) == "file" and value_kind(by_name["overlay"]) == "dir"
    assert value_kind(by_name["hostname"]) == "text" and value_kind(by_name["contain"]) == ""
    build = {f.name: f for f in contexts["build"].flags}
    assert "zstd" in build["compression"].choices and value_kind(build["dockerfile"]) == "file"
    assert "all" in {f.name: f for f in contexts["cache list"].flags}["type"].choices


# -------------------------------------------------------------------------------------------- bash


def test_bash_script_is_valid(scripts):
    subprocess.run(["bash", "-n", str(scripts["bash"])], check=True)


def bash_complete(script: Path, words: list[str], cwd: Path, wordbreaks: str | None = None) -> list[str]:
    """COMPREPLY of the completion function for ``words`` (the last is the word under the cursor)."""
    array = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    breaks = f"COMP_WORDBREAKS={wordbreaks!r}\n" if wordbreaks is not None else ""
    program = textwrap.dedent(f"""\
        source {str(script)!r}
        {breaks}COMP_WORDS=({array})
        COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))
        COMP_LINE="${{COMP_WORDS[*]}}"
        COMP_POINT=${{#COMP_LINE}}
        complete -p yurt >/dev/null && _yurt
        printf '%s\\n' "${{COMPREPLY[@]}}"
    """)
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", program], cwd=cwd, capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 0 and not result.stderr, result.stderr
    return [line for line in result.stdout.splitlines() if line]


@pytest.mark.parametrize("words, expected", [
    (["yurt", "ex"], ["exec"]),
    (["yurt", "exec", "--bi"], ["--bind"]),
    (["yurt", "instance", "s"], ["start", "stop"]),
    (["yurt", "cache", ""], ["list", "clean"]),
    (["yurt", "registry", "l"], ["login", "logout", "list"]),
    (["yurt", "--debug", "pu"], ["pull", "push"]),
    (["yurt", "-"], ["--debug", "-d", "--quiet", "-q", "--silent", "-s", "--verbose", "-v", "--nocolor", "--help",
                     "-h", "--version", "-V"]),
    (["yurt", "exec", "--mpi", ""], ["hybrid", "host", "none"]),
    (["yurt", "exec", "--mpi", "=", "h"], ["hybrid", "host"]),  # --mpi=h: bash splits at '='
    (["yurt", "exec", "--contain", "=", ""], ["true", "false"]),
    (["yurt", "build", "--compression", "l"], ["lz4", "lzo"]),
    (["yurt", "push", "--layer-compression", ""], ["gzip", "zstd"]),
    (["yurt", "cache", "list", "--type", "s"], ["sif"]),
    (["yurt", "cache", "clean", "--d"], ["--days", "--dry-run"]),
    (["yurt", "instance", "stop", "--s"], ["--signal"]),
    (["yurt", "help", "ins"], ["instance", "inspect"]),
    (["yurt", "completion", ""], ["bash", "zsh", "fish"]),
    (["yurt", "exec", "--env", "A", "=", "1", "--cont"], ["--contain", "--containall"]),  # K=V is one value
    (["yurt", "exec", "--hostname", ""], []),  # free text: nothing to offer
    (["yurt", "instance", "list", ""], []),
])
def test_bash_completes(scripts, files, words, expected):
    assert bash_complete(scripts["bash"], words, files) == expected


def test_bash_completes_paths_and_stops_at_the_image(scripts, files):
    bash = scripts["bash"]
    assert sorted(bash_complete(bash, ["yurt", "exec", "-B", ""], files)) == ["image.sif", "notes.txt", "subdir"]
    assert bash_complete(bash, ["yurt", "exec", "--bind", "=", "im"], files) == ["image.sif"]
    assert bash_complete(bash, ["yurt", "exec", "--overlay", ""], files) == ["subdir"]
    assert bash_complete(bash, ["yurt", "exec", "-cB", "n"], files) == ["notes.txt"]  # -c -B
    assert bash_complete(bash, ["yurt", "inspect", "i"], files) == ["image.sif"]
    # after the image, words are the payload's: no yurt options
    assert bash_complete(bash, ["yurt", "exec", "--contain", "image.sif", "--c"], files) == []
    assert bash_complete(bash, ["yurt", "exec", "-B", "notes.txt", "image.sif", "n"], files) == ["notes.txt"]
    assert bash_complete(bash, ["yurt", "exec", "-B", "notes.txt", "--pi"], files) == ["--pid", "--pids-limit"]
    # without '=' in COMP_WORDBREAKS the word is --opt=VALUE whole, and so is the reply
    assert bash_complete(bash, ["yurt", "pull", "--compression=l"], files, wordbreaks=" \t\n") == [
        "--compression=lz4", "--compression=lzo"]


# -------------------------------------------------------------------------------------------- zsh


needs_zsh = pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
needs_fish = pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")


@needs_zsh
def test_zsh_script_is_valid(scripts):
    subprocess.run(["zsh", "-n", str(scripts["zsh"])], check=True)


ZSH_HARNESS = r"""
zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z "PS1='' PROMPT_EOL_MARK=''; fpath=($1 \$fpath); autoload -U compinit; compinit -u -D"
zpty -w z "compadd() { local -a m; builtin compadd -O m \"\$@\"; print -rl -- \$m >> $2; builtin compadd \"\$@\" }"
zpty -w z "zstyle ':completion:*' menu no; setopt nolistbeep"
zpty -w z "yurt-tab() { zle expand-or-complete; zle -M COMPLETION-FINISHED }; zle -N yurt-tab; bindkey '^T' yurt-tab"
zpty -w z "print READY"
zpty -r z line '*READY*'
zpty -w -n z "$3"$'\C-t'
zpty -r z line '*COMPLETION-FINISHED*'
zpty -w z $'\C-u'"print DONE"
zpty -r z line '*DONE*'
zpty -d z
"""


def zsh_complete(script: Path, line: str, cwd: Path) -> list[str]:
    """What zsh's completion system adds as matches for ``line`` + TAB, with ``script`` autoloaded as _yurt.

    The key is a widget that completes and then says so: the next line is typed only after the
    completion finished, since compsys skips its work when more input is already pending (a loaded
    machine made the plain TAB-then-type version flaky)."""
    out = cwd.parent / f"{cwd.name}.matches"
    out.write_text("")
    subprocess.run(["zsh", "-f", "-c", ZSH_HARNESS, "zsh", str(script.parent), str(out), line], cwd=cwd,
                   capture_output=True, text=True, timeout=60, check=True)
    return sorted({m for m in out.read_text().splitlines() if m.strip()})


@needs_zsh
@pytest.mark.parametrize("line, expected", [
    ("yurt ex", ["exec"]),
    ("yurt exec --bi", ["--bind"]),
    ("yurt instance s", ["start", "stop"]),
    ("yurt exec --mpi ", ["host", "hybrid", "none"]),
    ("yurt cache list --type s", ["sif"]),
    ("yurt exec -B ", ["image.sif", "notes.txt", "subdir"]),
    ("yurt exec --contain image.sif --c", []),
])
def test_zsh_completes(scripts, files, line, expected):
    assert zsh_complete(scripts["zsh"], line, files) == expected


# ------------------------------------------------------------------------------------------- fish


@needs_fish
def test_fish_script_is_valid(scripts):
    subprocess.run(["fish", "--no-execute", str(scripts["fish"])], check=True)


@needs_fish
@pytest.mark.parametrize("line, expected", [
    ("yurt ex", ["exec"]),
    ("yurt exec --bi", ["--bind"]),
    ("yurt instance s", ["start", "stop"]),
    ("yurt exec --mpi ", ["host", "hybrid", "none"]),
    ("yurt exec --mpi=h", ["--mpi=host", "--mpi=hybrid"]),
    ("yurt registry -u bob lo", ["login", "logout"]),
    ("yurt exec -B ", ["image.sif", "notes.txt", "subdir/"]),
    ("yurt exec --contain image.sif --c", []),
])
def test_fish_completes(scripts, files, tmp_path, line, expected):
    result = subprocess.run(["fish", "--no-config", "-c", f"source {scripts['fish']}; complete -C {line!r}"],
                            cwd=files, capture_output=True, text=True, timeout=60, check=True,
                            env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert sorted(ln.split("\t")[0] for ln in result.stdout.splitlines()) == expected
