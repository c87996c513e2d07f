"""ContainerSpec <-> OCI config.json."""

from __future__ import annotations

import json

import pytest

from yurt.spec import (
    NS_IPC,
    NS_MOUNT,
    NS_NET,
    NS_PID,
    NS_USER,
    NS_UTS,
    ContainerSpec,
    IDMapping,
    Mount,
    Process,
)


def sample() -> ContainerSpec:
    return ContainerSpec(
        process=Process(args=["/bin/sh", "-c", "echo $A"], env={"A": "1", "B": "x=y", "EMPTY": ""},
                        cwd="/work", uid=1000, gid=100, no_new_privileges=True),
        namespaces=[NS_USER, NS_MOUNT, NS_PID, NS_IPC, NS_UTS, NS_NET],
        uid_mappings=[IDMapping(0, 1000, 1), IDMapping(1, 100000, 65536)],
        gid_mappings=[IDMapping(0, 100)],
        mounts=[
            Mount("/dev", "devdir"),
            Mount("/proc", "proc"),
            Mount("/sys", "sysfs"),
            Mount("/tmp", "tmpfs", None, ["mode=1777"]),
            Mount("/etc/hosts", "bind", "/etc/hosts", ["ro"], optional=True),
            Mount("/etc/passwd", "passwd", options=["name=alice", "uid=1000"]),
            Mount("/etc/group", "group", options=["name=alice", "gid=100"]),
            Mount("/etc/motd", "file", options=["ro"]),
            Mount("/data", "bind", "/srv/data", []),
        ],
        hostname="node1",
        root_readonly=False,
        annotations={"yurt.action": "run", "yurt.run.fallback": json.dumps(["/e", "x"])},
    )


def key(m: Mount):
    return (m.destination, m.kind, m.source, m.options)


def test_to_oci_shape():
    doc = sample().to_oci()
    assert doc["ociVersion"].startswith("1.")
    assert doc["root"] == {"path": "rootfs", "readonly": False}
    assert doc["process"]["args"] == ["/bin/sh", "-c", "echo $A"]
    assert doc["process"]["env"] == ["A=1", "B=x=y", "EMPTY="]
    assert doc["process"]["user"] == {"uid": 1000, "gid": 100}
    assert doc["process"]["cwd"] == "/work"
    assert doc["hostname"] == "node1"
    assert doc["linux"]["namespaces"] == [{"type": t} for t in ("user", "mount", "pid", "ipc", "uts", "network")]
    assert doc["linux"]["uidMappings"][1] == {"containerID": 1, "hostID": 100000, "size": 65536}
    json.dumps(doc)  # serialisable


def test_to_oci_root_path():
    assert sample().to_oci("/bundle/root")["root"]["path"] == "/bundle/root"


@pytest.mark.parametrize("kind", ["devdir", "passwd", "group", "file"])
def test_yurt_kinds_are_bind_with_marker(kind):
    doc = sample().to_oci()
    (entry,) = [m for m in doc["mounts"] if f"yurt.kind={kind}" in m["options"]]
    assert entry["type"] == "bind"


def test_kernel_kinds_keep_type():
    types = {m["destination"]: m["type"] for m in sample().to_oci()["mounts"]}
    assert types["/proc"] == "proc" and types["/sys"] == "sysfs" and types["/tmp"] == "tmpfs"
    assert types["/data"] == "bind"


def test_no_source_key_when_none():
    entries = {m["destination"]: m for m in sample().to_oci()["mounts"]}
    assert "source" not in entries["/proc"]
    assert entries["/data"]["source"] == "/srv/data"


def test_to_oci_does_not_mutate_spec():
    spec = sample()
    before = [list(m.options) for m in spec.mounts]
    spec.to_oci()
    spec.to_oci()
    assert [m.options for m in spec.mounts] == before


def test_round_trip():
    spec = sample()
    doc = json.loads(json.dumps(spec.to_oci()))
    back = ContainerSpec.from_oci(doc)
    assert back.process == spec.process
    assert back.namespaces == spec.namespaces
    assert back.uid_mappings == spec.uid_mappings
    assert back.gid_mappings == spec.gid_mappings
    assert [key(m) for m in back.mounts] == [key(m) for m in spec.mounts]
    assert back.hostname == spec.hostname
    assert back.root_readonly is False
    assert back.annotations == spec.annotations
    assert back.to_oci() == doc


def test_round_trip_yurt_kinds_restored():
    back = ContainerSpec.from_oci(sample().to_oci())
    kinds = {m.destination: m.kind for m in back.mounts}
    assert kinds["/dev"] == "devdir"
    assert kinds["/etc/passwd"] == "passwd"
    assert kinds["/etc/group"] == "group"
    assert kinds["/etc/motd"] == "file"
    for m in back.mounts:
        assert not any(o.startswith("yurt.kind=") for o in m.options)
    assert [m for m in back.mounts if m.destination == "/etc/passwd"][0].options == ["name=alice", "uid=1000"]


def test_no_hostname_round_trip():
    spec = ContainerSpec(process=Process(args=["true"]))
    doc = spec.to_oci()
    assert "hostname" not in doc
    back = ContainerSpec.from_oci(doc)
    assert back.hostname is None
    assert back.namespaces == [NS_USER, NS_MOUNT]
    assert back.root_readonly is True


def test_from_oci_minimal_and_foreign():
    doc = {
        "process": {"args": ["sh"], "env": ["A=1", "NOEQUALS", "B==2"], "user": {"uid": "5", "gid": 6}},
        "mounts": [{"destination": "/mnt", "type": "tmpfs"}, {"destination": "/x", "source": "/y",
                                                               "options": ["rbind", "ro"]}],
        "linux": {"uidMappings": [{"containerID": 0, "hostID": 1000}]},
    }
    spec = ContainerSpec.from_oci(doc)
    assert spec.process.env == {"A": "1", "B": "=2"}
    assert (spec.process.uid, spec.process.gid, spec.process.cwd) == (5, 6, "/")
    assert [key(m) for m in spec.mounts] == [("/mnt", "tmpfs", None, []), ("/x", "bind", "/y", ["rbind", "ro"])]
    assert spec.mounts[1].readonly
    assert spec.uid_mappings == [IDMapping(0, 1000, 1)]
    assert spec.namespaces == []


def test_from_oci_empty():
    spec = ContainerSpec.from_oci({})
    assert spec.process.args == [] and spec.mounts == [] and spec.annotations == {}


def test_has():
    spec = sample()
    assert spec.has(NS_PID) and not ContainerSpec(process=Process(args=["x"])).has(NS_PID)


def test_mount_readonly_property():
    assert Mount("/a", options=["ro"]).readonly
    assert not Mount("/a", options=["rw"]).readonly
    assert not Mount("/a").readonly
