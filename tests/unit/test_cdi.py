"""CDI specs: device names, spec lookup, and containerEdits applied to a ContainerSpec."""

from __future__ import annotations

import json

import pytest

from yurt.errors import UsageError
from yurt.runtime import cdi
from yurt.spec import ContainerSpec, Mount, Process


def write_spec(d, name, doc):
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(json.dumps(doc))


def vendor_spec(node, libdir):
    return {
        "cdiVersion": "0.6.0",
        "kind": "vendor.example.com/gpu",
        "containerEdits": {"env": ["VENDOR_DRIVER=1"]},
        "devices": [
            {"name": "0", "containerEdits": {
                "env": ["VENDOR_VISIBLE=0"],
                "deviceNodes": [{"path": "/dev/vendor0", "hostPath": str(node)}],
                "mounts": [{"hostPath": str(libdir), "containerPath": "/usr/lib/vendor", "options": ["ro", "bind"]}],
                "hooks": [{"hookName": "createContainer", "path": "/usr/bin/vendor-hook", "args": ["vendor-hook", "x"],
                           "timeout": 5}],
            }},
            {"name": "all", "containerEdits": {"env": ["VENDOR_VISIBLE=all"]}},
        ],
    }


def new_spec(contain=True):
    dev = Mount("/dev", "devdir") if contain else Mount("/dev", "bind", "/dev", ["dev"])
    return ContainerSpec(process=Process(args=["true"], env={}), mounts=[dev])


def test_parse_device_name():
    assert cdi.parse_device_name("nvidia.com/gpu=all") == ("nvidia.com/gpu", "all")
    for bad in ("nvidia.com/gpu", "gpu=0", "nvidia.com/gpu/x=0", "nvidia.com/gpu=-0", "vendor.com/=0"):
        with pytest.raises(UsageError):
            cdi.parse_device_name(bad)


def test_device_edits_applied(tmp_path):
    node = tmp_path / "vendor0"
    node.write_text("")
    libdir = tmp_path / "lib"
    libdir.mkdir()
    write_spec(tmp_path / "cdi", "vendor.json", vendor_spec(node, libdir))
    spec = new_spec()
    cdi.apply(spec, ["vendor.example.com/gpu=0"], [str(tmp_path / "cdi")])
    assert spec.process.env == {"VENDOR_DRIVER": "1", "VENDOR_VISIBLE": "0"}
    assert spec.extras.inject_env["VENDOR_VISIBLE"] == "0"
    assert f"node={node}:vendor0" in spec.mounts[0].options
    lib = next(m for m in spec.mounts if m.destination == "/usr/lib/vendor")
    assert lib.source == str(libdir) and lib.readonly
    (hook,) = spec.hooks["createContainer"]
    assert (hook.path, hook.args, hook.timeout) == ("/usr/bin/vendor-hook", ["vendor-hook", "x"], 5)
    assert spec.annotations["yurt.devices"] == "vendor.example.com/gpu=0"


def test_spec_level_edits_once_and_device_order(tmp_path):
    node = tmp_path / "vendor0"
    node.write_text("")
    write_spec(tmp_path / "cdi", "vendor.json", vendor_spec(node, tmp_path))
    edits = cdi.resolve(["vendor.example.com/gpu=all", "vendor.example.com/gpu=0"], [str(tmp_path / "cdi")])
    envs = [e.get("env") for _, e in edits]
    assert envs == [["VENDOR_DRIVER=1"], ["VENDOR_VISIBLE=all"], ["VENDOR_VISIBLE=0"]]


def test_unknown_kind_and_device(tmp_path):
    write_spec(tmp_path / "cdi", "vendor.json", vendor_spec(tmp_path, tmp_path))
    with pytest.raises(UsageError, match="unknown CDI device other.com/gpu=0"):
        cdi.resolve(["other.com/gpu=0"], [str(tmp_path / "cdi")])
    with pytest.raises(UsageError, match="has: 0, all"):
        cdi.resolve(["vendor.example.com/gpu=7"], [str(tmp_path / "cdi")])


def test_missing_host_node_is_an_error(tmp_path):
    write_spec(tmp_path / "cdi", "vendor.json", vendor_spec(tmp_path / "absent", tmp_path))
    with pytest.raises(UsageError, match="does not exist on this host"):
        cdi.apply(new_spec(), ["vendor.example.com/gpu=0"], [str(tmp_path / "cdi")])


def test_later_directory_wins_and_same_directory_clash(tmp_path):
    doc = vendor_spec(tmp_path, tmp_path)
    write_spec(tmp_path / "etc", "a.json", doc)
    later = dict(doc, containerEdits={"env": ["FROM=run"]})
    write_spec(tmp_path / "run", "b.json", later)
    edits = cdi.resolve(["vendor.example.com/gpu=all"], [str(tmp_path / "etc"), str(tmp_path / "run")])
    assert edits[0][1] == {"env": ["FROM=run"]}
    write_spec(tmp_path / "run", "c.json", later)
    with pytest.raises(UsageError, match="defined twice"):
        cdi.resolve(["vendor.example.com/gpu=all"], [str(tmp_path / "etc"), str(tmp_path / "run")])


def test_unreadable_yaml_is_named(tmp_path):
    d = tmp_path / "cdi"
    d.mkdir()
    (d / "vendor.yaml").write_text("cdiVersion: 0.6.0\nkind: vendor.example.com/gpu\n")
    with pytest.raises(UsageError, match="vendor.yaml"):
        cdi.resolve(["vendor.example.com/gpu=0"], [str(d)])


def test_node_on_shared_host_dev(tmp_path, capsys):
    spec = new_spec(contain=False)
    cdi.apply_edits(spec, [("t", {"deviceNodes": [{"path": "/dev/null"}]})])
    assert spec.mounts == [Mount("/dev", "bind", "/dev", ["dev"])]  # already visible: nothing to add


def test_site_denied_binds_cover_cdi_paths(tmp_path):
    """A CDI spec the user wrote is no way around the site's deny_binds: every host path is checked."""
    from yurt.errors import PolicyError

    node = tmp_path / "vendor0"
    node.write_text("")
    libdir = tmp_path / "lib"
    libdir.mkdir()
    write_spec(tmp_path / "cdi", "vendor.json", vendor_spec(node, libdir))

    class Site:
        def __init__(self, denied):
            self.denied, self.checked = denied, []

        def check_bind(self, path, what):
            self.checked.append(path)
            if path == self.denied:
                raise PolicyError(f"{what}: {path} may not be bound")

    site = Site(None)
    cdi.apply(new_spec(), ["vendor.example.com/gpu=0"], [str(tmp_path / "cdi")], site)
    assert sorted(site.checked) == sorted([str(node), str(libdir)])
    for denied in (str(node), str(libdir)):
        with pytest.raises(PolicyError, match="may not be bound"):
            cdi.apply(new_spec(), ["vendor.example.com/gpu=0"], [str(tmp_path / "cdi")], Site(denied))


@pytest.mark.parametrize("edits", [
    {"deviceNodes": ["/dev/x"]},
    {"mounts": ["/lib"]},
    {"hooks": ["/bin/true"]},
    {"hooks": [{"hookName": "prestart", "path": "/bin/true", "timeout": "soon"}]},
])
def test_malformed_edits_are_one_line_errors(tmp_path, edits):
    doc = {"cdiVersion": "0.6.0", "kind": "vendor.example.com/gpu",
           "devices": [{"name": "0", "containerEdits": edits}]}
    write_spec(tmp_path / "cdi", "bad.json", doc)
    with pytest.raises(UsageError, match="CDI spec"):
        cdi.apply(new_spec(), ["vendor.example.com/gpu=0"], [str(tmp_path / "cdi")])
