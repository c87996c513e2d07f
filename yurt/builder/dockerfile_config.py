"""The image config a Dockerfile stage produces: Env, Cmd, Entrypoint, Shell, WorkingDir, User, Labels, ports....

Separate from the parser (:mod:`yurt.builder.dockerfile`) because it is another question with its own rules (Docker's,
for CMD/ENTRYPOINT and SHELL, relative WORKDIRs, inherited ONBUILD triggers) asked of parsed stages: the build
(:mod:`yurt.builder.dockerbuild`) asks it before every instruction, as part of the steps' cache keys, and the
conversion to a definition file (:mod:`yurt.builder.dockerfile_convert`) for the runscript.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

from yurt.builder.dockerfile import _HEALTHCHECK_DURATIONS, DEFAULT_PATH, DEFAULT_SHELL, Instruction, Stage
from yurt.builder.dockerfile_args import _go_duration, _port_keys, _workdir

__all__ = ["image_config"]


def _set_env(env: list[str], key: str, value: str) -> None:
    for i, item in enumerate(env):
        if item.partition("=")[0] == key:
            env[i] = f"{key}={value}"
            return
    env.append(f"{key}={value}")


def _healthcheck_config(ins: Instruction) -> dict:
    config: dict = {"Test": list(ins.words)}
    if ins.words == ["NONE"]:
        return config
    for flag, key in _HEALTHCHECK_DURATIONS:
        if flag in ins.flags:
            ns = _go_duration(ins.flags[flag])
            if ns:
                config[key] = ns
    if int(ins.flags.get("retries", "0")):
        config["Retries"] = int(ins.flags["retries"])
    return config


def image_config(stage: Stage, base: Mapping | None = None) -> dict:
    """The OCI image config's ``config`` member after the stage's instructions, applied on top of ``base``.

    ``base`` is the config of the image (or earlier stage) the stage starts from. Docker's rules: CMD and ENTRYPOINT in
    shell form run through SHELL (default ``/bin/sh -c``); ENTRYPOINT drops a CMD inherited from the base but keeps
    one set earlier in the same stage; a relative WORKDIR is relative to the previous one; the base's ONBUILD
    triggers are not inherited (running them is the caller's job); PATH gets the default when nothing sets it.
    """
    config: dict = copy.deepcopy(dict(base)) if base else {}
    config.pop("OnBuild", None)
    env = list(config.get("Env") or [])
    shell = list(config.get("Shell") or DEFAULT_SHELL)
    cmd_set = False
    for ins in stage.instructions:
        cmd = ins.cmd
        if cmd == "ENV":
            for key, value in ins.pairs:
                _set_env(env, key, value)
        elif cmd in ("CMD", "ENTRYPOINT"):
            value = list(ins.json_form) if ins.json_form is not None else [*shell, ins.args]
            if cmd == "CMD":
                config["Cmd"] = value
                cmd_set = True
            else:
                config["Entrypoint"] = value
                if not cmd_set:
                    config["Cmd"] = None
        elif cmd == "SHELL":
            shell = list(ins.json_form or DEFAULT_SHELL)
            config["Shell"] = list(shell)
        elif cmd == "WORKDIR":
            config["WorkingDir"] = _workdir(config.get("WorkingDir") or "/", ins.words[0])
        elif cmd == "USER":
            config["User"] = ins.words[0]
        elif cmd == "LABEL":
            config["Labels"] = {**(config.get("Labels") or {}), **dict(ins.pairs)}
        elif cmd == "EXPOSE":
            ports = dict(config.get("ExposedPorts") or {})
            for port in ins.words:
                for key in _port_keys(port):
                    ports[key] = {}
            config["ExposedPorts"] = ports
        elif cmd == "VOLUME":
            config["Volumes"] = {**(config.get("Volumes") or {}), **{v: {} for v in ins.words}}
        elif cmd == "STOPSIGNAL":
            config["StopSignal"] = ins.words[0]
        elif cmd == "HEALTHCHECK":
            config["Healthcheck"] = _healthcheck_config(ins)
        elif cmd == "ONBUILD":
            config["OnBuild"] = [*(config.get("OnBuild") or []), ins.words[0]]
    if not any(item.partition("=")[0] == "PATH" for item in env):
        env.insert(0, f"PATH={DEFAULT_PATH}")
    config["Env"] = env
    return config
