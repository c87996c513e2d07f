"""Definition file -> Dockerfile, for what both formats can express.

The other direction is :func:`yurt.builder.dockerfile_convert.to_deffile`.  Anything
without an equivalent (``%setup`` runs on the host, ``%test``, non-docker
bootstrap agents, shell logic in ``%environment``) is written as a comment and
reported as a warning, never silently dropped.

``%post`` becomes one ``RUN`` that writes the script to a file and runs it
with ``sh -e`` (as Apptainer does): joining multi-line shell code into a
single command line would break ``if``/``for`` blocks.
"""

from __future__ import annotations

import json
import re

from yurt.builder.deffile_model import Definition

_EXPORT = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
# Values Docker's ENV can take over: plain words, quoted strings, $NAME/${NAME} references (ENV expands
# those itself); nothing that needs a shell (command substitution, operators, backslashes).
_SAFE_VALUE = re.compile(r"""^(?:"[^"`\\]*"|'[^']*'|[^\s"'`\\;&|<>()]*)$""")


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def _script_run(body: str, path: str, interpreter: str = "/bin/sh -e") -> str:
    lines = body.rstrip("\n").split("\n")
    quoted = " \\\n        ".join(_sh_quote(line) for line in lines)
    return (f"RUN printf '%s\\n' \\\n        {quoted} \\\n    > {path} && {interpreter} {path} && rm -f {path}")


def _env_lines(body: str, warn) -> list[str]:
    out = []
    for line in body.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _EXPORT.match(stripped)
        if m and _SAFE_VALUE.match(m.group(2)):
            value = m.group(2)
            if value[:1] in "\"'":
                value = value[1:-1]
            out.append(f"ENV {m.group(1)}={json.dumps(value)}")
        else:
            warn(f"%environment line not converted (shell logic): {stripped}")
            out.append(f"# not converted (%environment): {stripped}")
    return out


def to_dockerfile(definitions: list[Definition]) -> tuple[str, list[str]]:
    """Return ``(Dockerfile text, warnings)``."""
    warnings: list[str] = []
    out: list[str] = []
    for d in definitions:
        def warn(msg: str, d: Definition = d) -> None:
            warnings.append(f"{d.filename}:{d.line}: {msg}")

        name = f" AS {d.stage}" if d.stage else ""
        if d.bootstrap == "docker":
            out.append(f"FROM {d.source}{name}")
        elif d.bootstrap == "scratch":
            out.append(f"FROM scratch{name}")
        else:
            warn(f"Bootstrap: {d.bootstrap} has no Dockerfile equivalent; using FROM scratch")
            out.append(f"# not converted: Bootstrap: {d.bootstrap} From: {d.source or ''}".rstrip())
            out.append(f"FROM scratch{name}")
        for section, label in (("setup", "%setup runs on the host"), ("startscript", "%startscript"),
                               ("pre", "%pre runs on the host")):
            if getattr(d, section, None):
                warn(f"{label}: no Dockerfile equivalent, not converted")
                out.append(f"# not converted: %{section}")
        for src, dst in d.files:
            out.append(f"COPY {json.dumps([src, dst])}")
        for stage, pairs in d.files_from.items():
            for src, dst in pairs:
                out.append(f"COPY --from={stage} {json.dumps([src, dst])}")
        if d.environment:
            out.extend(_env_lines(d.environment, warn))
        if d.post:
            out.append(_script_run(d.post, "/tmp/yurt-post.sh"))
        for key, value in d.labels.items():
            out.append(f"LABEL {json.dumps(key)}={json.dumps(value)}")
        if d.help:
            out.append(f"LABEL org.opencontainers.image.description={json.dumps(d.help.strip())}")
        if d.test:
            warn("%test: no Dockerfile equivalent (HEALTHCHECK is something else), not converted")
            out.append("# not converted: %test")
        if d.runscript:
            script = d.runscript
            if script.startswith("#!"):
                first, _, rest = script.partition("\n")
                warn(f"%runscript interpreter {first[2:].strip()} replaced by /bin/sh")
                script = rest
            out.append(f"ENTRYPOINT {json.dumps(['/bin/sh', '-c', script.strip(), 'runscript'])}")
        if d.apps:
            warn("SCIF apps: no Dockerfile equivalent, not converted")
            out.append("# not converted: SCIF app sections")
        out.append("")
    return "\n".join(out), warnings
