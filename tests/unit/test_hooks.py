"""OCI hook definitions (oci-hooks(5)): parsing, matching, masking, and running one hook."""

from __future__ import annotations

import json
import os

import pytest

from yurt.cli.actions import INTEGRATIONS  # the built-in hooks of the layers above the runtime (yurt-mpi.json)
from yurt.errors import UsageError
from yurt.runtime import hookrun, hooks
from yurt.spec import ContainerSpec, Hook, Mount, Process


def definition(**when):
    return {"version": "1.0.0", "hook": {"path": "/usr/libexec/h", "args": ["h", "x"], "timeout": 3},
            "when": when, "stages": ["prestart", "poststop"]}


def parsed(**when):
    return hooks.parse_definition(definition(**when), "/etc/yurt/hooks.d/10-h.json")


def test_parse_valid_definition():
    d = parsed(always=True)
    assert d.hook == Hook("/usr/libexec/h", ["h", "x"], [], 3)
    assert d.stages == ["prestart", "poststop"] and d.name == "10-h.json"


@pytest.mark.parametrize("change, message", [
    ({"version": "0.1.0"}, "version"),
    ({"hook": {"path": "relative"}}, "absolute"),
    ({"when": {}}, "at least one condition"),
    ({"when": {"always": "yes"}}, "true or false"),
    ({"when": {"whenever": True}}, "unknown condition"),
    ({"stages": ["prestart", "later"]}, "stages"),
    ({"hook": {"path": "/x", "timeout": 0}}, "timeout"),
])
def test_parse_rejects(change, message):
    doc = dict(definition(always=True), **change)
    with pytest.raises(UsageError, match=message):
        hooks.parse_definition(doc, "f.json")


def test_matching_rules():
    args, ann = ["/usr/bin/python3", "x.py"], {"yurt.nv": "true", "com.example.dept": "fluid-dynamics"}
    assert hooks.matches(parsed(always=True), args, ann, False)
    assert not hooks.matches(parsed(always=False), args, ann, False)
    assert hooks.matches(parsed(commands=[".*/python3$"]), args, ann, False)
    assert not hooks.matches(parsed(commands=["^/bin/sh$"]), args, ann, False)
    assert hooks.matches(parsed(annotations={r"^yurt\.nv$": "^true$"}), args, ann, False)
    assert hooks.matches(parsed(annotations={"dept": "fluid"}), args, ann, False)  # searched, not anchored
    assert not hooks.matches(parsed(annotations={r"^yurt\.rocm$": "."}), args, ann, False)
    assert hooks.matches(parsed(hasBindMounts=True), args, ann, True)
    assert not hooks.matches(parsed(hasBindMounts=True), args, ann, False)
    # every condition that is set must hold
    assert not hooks.matches(parsed(always=True, hasBindMounts=True), args, ann, False)
    assert hooks.matches(parsed(always=True, commands=["python"], hasBindMounts=True), args, ann, True)
    with pytest.raises(UsageError, match="regular expression"):
        hooks.matches(parsed(commands=["("]), args, ann, False)


def test_collect_order_and_masking(tmp_path):
    site, user, extra = tmp_path / "site", tmp_path / "user", tmp_path / "extra"
    for d in (site, user, extra):
        d.mkdir()
    (site / "20-site.json").write_text("{}")
    (site / "yurt-nvidia.json").write_text("{}")
    (user / "20-site.json").write_text("{}")  # cannot mask the site's file
    (user / "10-User.json").write_text("{}")
    (extra / "yurt-infiniband.json").write_text("{}")
    (extra / "notes.txt").write_text("")
    got = hooks.collect(str(site), [str(user), str(extra)], {**hooks.BUILTINS, **INTEGRATIONS})
    assert got == [
        ("10-User.json", str(user / "10-User.json")),
        ("20-site.json", str(site / "20-site.json")),
        ("yurt-infiniband.json", str(extra / "yurt-infiniband.json")),
        ("yurt-mpi.json", None),
        ("yurt-nvidia.json", str(site / "yurt-nvidia.json")),
        ("yurt-rocm.json", None),
    ]


def test_site_dir_override_only_without_real_site_dir(tmp_path):
    env = {"YURT_SYSCONFDIR": str(tmp_path)}
    expected = "/etc/yurt/hooks.d" if os.path.exists("/etc/yurt/hooks.d") else str(tmp_path / "hooks.d")
    assert hooks.site_dir(env) == expected


def new_spec(args=("/bin/app",)):
    return ContainerSpec(process=Process(args=list(args), env={}), mounts=[Mount("/dev", "bind", "/dev", ["dev"])],
                         annotations={"yurt.action": "exec"})


def test_integrate_adds_matching_hooks_in_file_order(tmp_path):
    d = tmp_path / "hooks"
    d.mkdir()
    (d / "b.json").write_text(json.dumps(dict(definition(always=True), hook={"path": "/b"})))
    (d / "a.json").write_text(json.dumps(dict(definition(commands=["app$"]), hook={"path": "/a"})))
    (d / "c.json").write_text(json.dumps(dict(definition(commands=["other"]), hook={"path": "/c"})))
    env = {"HOME": str(tmp_path), "YURT_SYSCONFDIR": str(tmp_path / "nosite"), "YURT_DRIVER_ROOT": str(tmp_path)}
    spec = hooks.integrate(new_spec(), hooks_dirs=[str(d)], env=env)
    assert [h.path for h in spec.hooks["prestart"]] == ["/a", "/b"]
    assert [h.path for h in spec.hooks["poststop"]] == ["/a", "/b"]
    doc = spec.to_oci()
    assert [h["path"] for h in doc["hooks"]["prestart"]] == ["/a", "/b"]
    assert ContainerSpec.from_oci(doc).hooks == spec.hooks


def test_builtin_nvidia_replaced_by_a_hook_file(tmp_path, capsys):
    d = tmp_path / "hooks"
    d.mkdir()
    site_hook = dict(definition(annotations={r"^yurt\.nv$": "^true$"}), hook={"path": "/usr/bin/site-nv-hook"},
                     stages=["createContainer"])
    (d / "yurt-nvidia.json").write_text(json.dumps(site_hook))
    env = {"HOME": str(tmp_path), "YURT_SYSCONFDIR": str(tmp_path / "nosite"), "YURT_DRIVER_ROOT": str(tmp_path)}
    spec = hooks.integrate(new_spec(), nv=True, hooks_dirs=[str(d)], env=env)
    assert [h.path for h in spec.hooks["createContainer"]] == ["/usr/bin/site-nv-hook"]
    assert capsys.readouterr().err == ""  # the built-in --nv did not run (it would warn: no driver here)
    hooks.integrate(new_spec(), nv=True, env=env)
    assert "no NVIDIA driver found" in capsys.readouterr().err


def test_builtin_mpi_runs_for_ranks_and_a_site_file_replaces_it(tmp_path, monkeypatch):
    from yurt.hpc import mpi

    calls = []
    monkeypatch.setattr(mpi, "plan_edits", lambda spec, env, host=False: calls.append(host))
    env = {"HOME": str(tmp_path), "YURT_SYSCONFDIR": str(tmp_path / "nosite"), "YURT_DRIVER_ROOT": str(tmp_path)}
    spec = hooks.integrate(new_spec(), mpi="hybrid", env=env, integrations=INTEGRATIONS)
    assert calls == [False] and spec.annotations["yurt.mpi"] == "hybrid"
    hooks.integrate(new_spec(), env=env, integrations=INTEGRATIONS)
    assert calls == [False]  # not a rank: nothing
    hooks.integrate(new_spec(), mpi="hybrid", env=env)
    assert calls == [False]  # the runtime alone knows no MPI: the command line hands yurt-mpi.json in
    d = tmp_path / "hooks"
    d.mkdir()
    site_hook = dict(definition(annotations={r"^yurt\.mpi$": "^host$"}), hook={"path": "/usr/bin/site-mpi-hook"},
                     stages=["createContainer"])
    (d / "yurt-mpi.json").write_text(json.dumps(site_hook))
    spec = hooks.integrate(new_spec(), mpi="host", hooks_dirs=[str(d)], env=env, integrations=INTEGRATIONS)
    assert calls == [False] and [h.path for h in spec.hooks["createContainer"]] == ["/usr/bin/site-mpi-hook"]


def test_run_hook_gets_state_on_stdin(tmp_path):
    out = tmp_path / "state.json"
    hook = Hook("/bin/sh", ["sh", "-c", f'cat > {out}; echo "$FOO" >> {out}'], ["FOO=bar"])
    assert hookrun.run_hook(hook, b'{"status": "creating"}') is None
    assert out.read_text() == '{"status": "creating"}bar\n'


def test_run_hook_failures():
    assert hookrun.run_hook(Hook("/bin/sh", ["sh", "-c", "exit 5"]), b"") == "hook /bin/sh failed with exit status 5"
    assert "timed out after 1 s" in hookrun.run_hook(Hook("/bin/sh", ["sh", "-c", "sleep 10"], [], 1), b"")
    assert "exit status 127" in hookrun.run_hook(Hook("/nonexistent/hook"), b"")
