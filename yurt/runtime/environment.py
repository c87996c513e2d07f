"""The container's environment, computed as plain data in the parent.

Rules follow Apptainer so that job scripts behave the same:

* the host environment passes through, except ``PATH``, ``LD_LIBRARY_PATH``
  and ``HOME`` (the container gets the image's ``PATH`` or a standard one,
  no host library path, and the container home), and except yurt's own
  ``YURT_*``/``YURTENV_*`` variables and Apptainer's ``APPTAINER*``/``SINGULARITY*``;
* ``--cleanenv`` keeps only ``HOME``, ``PATH``, ``TERM``, ``USER``,
  ``LOGNAME``, ``PWD`` and ``LANG=C``; ``TERM`` and the ``*_proxy`` variables
  are kept even then;
* the image's environment (OCI ``Env``, then ``/.singularity.d/env/*.sh``
  sourced in the container) overrides the host's;
* injected variables win over everything: ``YURTENV_K=V`` (and Apptainer's
  ``APPTAINERENV_``/``SINGULARITYENV_`` for portability), then ``--env-file``,
  then ``--env``.  ``PREPEND_PATH``/``APPEND_PATH``/``PATH`` injected this
  way edit the final ``PATH``.
"""

from __future__ import annotations

from yurt.errors import UsageError

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BLOCKED = {"PATH", "LD_LIBRARY_PATH", "HOME"}
BLOCKED_PREFIXES = ("YURT_", "YURTENV_", "APPTAINER", "SINGULARITY")
INJECT_PREFIXES = ("YURTENV_", "APPTAINERENV_", "SINGULARITYENV_")
CLEANENV_KEEP = ("TERM", "USER", "LOGNAME", "PWD")
ALWAYS_KEEP = ("TERM", "http_proxy", "https_proxy", "ftp_proxy", "no_proxy", "all_proxy",
               "HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY")
PATH_EDITS = ("PREPEND_PATH", "APPEND_PATH")


ENV_FILE_LIMIT = 4 << 20


def parse_env_file(path: str) -> dict[str, str]:
    """Read ``K=V`` lines (``#`` comments, optional ``export``, quotes stripped).

    The file is the user's (a pipe such as ``<(...)`` works), but it must be UTF-8 text without
    NUL bytes and at most 4 MiB (:mod:`yurt.readfile`, which also keeps a FIFO from hanging the
    open): anything else is one UsageError naming the file and line.
    """
    from yurt.readfile import read_text

    out: dict[str, str] = {}
    for n, raw in enumerate(read_text(path, "--env-file", ENV_FILE_LIMIT).split("\n"), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[7:].lstrip()
        key, sep, value = line.partition("=")
        if not sep or not _valid_name(key):
            raise UsageError(f"{path}:{n}: expected KEY=VALUE, got {raw!r}")
        import shlex

        try:
            parts = shlex.split(value, posix=True)
        except ValueError:
            raise UsageError(f"{path}:{n}: unbalanced quotes in {raw!r}")
        out[key] = " ".join(parts) if parts else ""
    return out


def parse_env_args(items: list[str]) -> dict[str, str]:
    """``--env K=V`` values; a comma list is split only before ``NAME=`` items."""
    out: dict[str, str] = {}
    for item in items:
        for piece in _split_env_list(item):
            key, sep, value = piece.partition("=")
            if not sep or not _valid_name(key):
                raise UsageError(f"--env expects KEY=VALUE, got {piece!r}")
            out[key] = value
    return out


def _split_env_list(item: str) -> list[str]:
    pieces: list[str] = []
    for chunk in item.split(","):
        name = chunk.partition("=")[0]
        if pieces and ("=" not in chunk or not _valid_name(name)):
            pieces[-1] += "," + chunk
        else:
            pieces.append(chunk)
    return pieces


def _valid_name(key: str) -> bool:
    """A shell variable name: ASCII letters, digits and ``_`` (``é=1`` would break the env script)."""
    return bool(key) and key.isascii() and (key[0].isalpha() or key[0] == "_") and all(
        c.isalnum() or c == "_" for c in key)


def injected_from_host(host: dict[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for prefix in reversed(INJECT_PREFIXES):  # YURTENV_ wins over the Apptainer spellings
        for k, v in host.items():
            if k.startswith(prefix) and len(k) > len(prefix):
                out[k[len(prefix):]] = v
    return out


def build_environment(
    host: dict[str, str],
    *,
    home: str,
    cleanenv: bool = False,
    image_env: dict[str, str] | None = None,
    inject: dict[str, str] | None = None,
    container_vars: dict[str, str] | None = None,
) -> tuple[dict[str, str], dict[str, str]]:
    """Return ``(environment, late)``.

    ``environment`` is what the payload starts with.  ``late`` holds the
    injected assignments that must be re-applied *after* the image's env
    scripts are sourced (they win over the image); when the image has no env
    scripts they are already part of ``environment``.
    """
    if cleanenv:
        env = {k: host[k] for k in CLEANENV_KEEP if k in host}
        env["LANG"] = "C"
    else:
        env = {k: v for k, v in host.items() if k not in BLOCKED and not k.startswith(BLOCKED_PREFIXES)}
    for k in ALWAYS_KEEP:
        if k in host:
            env[k] = host[k]
    env["PATH"] = DEFAULT_PATH
    env["HOME"] = home
    for k, v in (image_env or {}).items():
        env[k] = v
    late: dict[str, str] = {}
    for k, v in (inject or {}).items():
        if k in PATH_EDITS:
            continue
        late[k] = v
    edits = {k: v for k, v in (inject or {}).items() if k in PATH_EDITS}
    env.update(late)
    env["PATH"] = apply_path_edits(env["PATH"], edits)
    if edits:
        late.update(edits)
    env.update(container_vars or {})
    late.update(container_vars or {})
    return env, late


def apply_path_edits(path: str, edits: dict[str, str]) -> str:
    if edits.get("PREPEND_PATH"):
        path = edits["PREPEND_PATH"] + ":" + path
    if edits.get("APPEND_PATH"):
        path = path + ":" + edits["APPEND_PATH"]
    return path


def env_script_wrapper(late: dict[str, str], app: str | None = None) -> str:
    """Shell text that sources the image's env scripts then re-applies ``late``.

    Run as ``/bin/sh -c TEXT yurt CMD ARGS...``: the shell ``exec``s the payload,
    so no extra process remains and signals and exit codes are the payload's.
    """
    lines = [
        'for __yurt_f in /.singularity.d/env/*.sh; do if [ -f "$__yurt_f" ]; then . "$__yurt_f"; fi; done',
        "unset __yurt_f",
    ]
    if app:  # a SCIF app's %appenv comes after the image's own environment
        lines.insert(1, f'for __yurt_f in /scif/apps/{app}/scif/env/*.sh; do if [ -f "$__yurt_f" ]; then '
                        '. "$__yurt_f"; fi; done')
    for k, v in late.items():
        if k == "PREPEND_PATH":
            lines.append(f'export PATH={sh_quote(v)}:"$PATH"')
        elif k == "APPEND_PATH":
            lines.append(f'export PATH="$PATH":{sh_quote(v)}')
        else:
            lines.append(f"export {k}={sh_quote(v)}")
    lines.append('exec "$@"')
    return "\n".join(lines)


def sh_quote(value: str) -> str:
    """Quote for POSIX sh (what ``shlex.quote`` does, without importing ``re``)."""
    return "'" + value.replace("'", "'\"'\"'") + "'"
