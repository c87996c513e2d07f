"""``--nv`` against a fake driver tree, CDI devices and OCI hooks, in real containers, unprivileged.

No GPU is needed: the driver tree (libraries, an ``nvidia-smi`` script, device
files) is made by the test and found through ``YURT_DRIVER_ROOT``.  Hooks are
shell scripts that save the OCI state they get on stdin.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.userns]

if os.geteuid() == 0:
    pytest.skip("rootless tests run as the unprivileged test user", allow_module_level=True)

MULTIARCH = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu", "ppc64le": "powerpc64le-linux-gnu"}
STAGES = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"rc={result.returncode}\nstdout={result.stdout}\nstderr={result.stderr}"
    return result.stdout


def fake_driver(root: Path) -> Path:
    lib = root / "usr/lib" / MULTIARCH.get(os.uname().machine, "")
    lib.mkdir(parents=True)
    (lib / "libcuda.so.535.104").write_text("fake libcuda\n")
    (lib / "libcuda.so.1").symlink_to("libcuda.so.535.104")
    (lib / "libnvidia-ml.so.1").write_text("fake nvml\n")
    (root / "usr/bin").mkdir(parents=True)
    smi = root / "usr/bin/nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI 535.104 (fake)'\n")
    smi.chmod(0o755)
    (root / "dev").mkdir()
    for name in ("nvidia0", "nvidiactl"):
        (root / "dev" / name).write_text(f"{name}\n")
    return root


@pytest.fixture
def no_site(tmp_path):
    """Keep the machine's own /etc/yurt hooks and lists out of the way where possible."""
    return {"YURT_SYSCONFDIR": str(tmp_path / "no-site"), "XDG_CONFIG_HOME": str(tmp_path / "config")}


def test_nv_with_fake_driver(yurt_cmd, busybox_rootfs, tmp_path, no_site):
    root = fake_driver(tmp_path / "driver")
    env = dict(no_site, YURT_DRIVER_ROOT=str(root))
    script = ('echo "LD=$LD_LIBRARY_PATH"; cd /.singularity.d/libs; cat libcuda.so.1 libnvidia-ml.so.1; '
              "nvidia-smi")
    out = ok(yurt_cmd("exec", "--nv", busybox_rootfs, "sh", "-c", script, env=env))
    lines = out.splitlines()
    assert lines[0].startswith("LD=/.singularity.d/libs")
    assert lines[1:] == ["fake libcuda", "fake nvml", "NVIDIA-SMI 535.104 (fake)"]
    # --contain: the device nodes are bound into the minimal /dev
    out = ok(yurt_cmd("exec", "--contain", "--nv", busybox_rootfs, "cat", "/dev/nvidia0", "/dev/nvidiactl", env=env))
    assert out == "nvidia0\nnvidiactl\n"


def test_nv_library_path_survives_image_env_scripts(yurt_cmd, busybox_rootfs_copy, tmp_path, no_site):
    envdir = busybox_rootfs_copy / ".singularity.d/env"
    envdir.mkdir(parents=True, exist_ok=True)
    (envdir / "90-environment.sh").write_text("export LD_LIBRARY_PATH=/opt/app/lib\n")
    env = dict(no_site, YURT_DRIVER_ROOT=str(fake_driver(tmp_path / "driver")))
    out = ok(yurt_cmd("exec", "--nv", busybox_rootfs_copy, "sh", "-c", 'echo "$LD_LIBRARY_PATH"', env=env))
    assert out.strip() == "/.singularity.d/libs:/opt/app/lib"


def test_nv_without_driver_warns_and_runs(yurt_cmd, busybox_rootfs, tmp_path, no_site):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = yurt_cmd("exec", "--nv", busybox_rootfs, "echo", "ran", env=dict(no_site, YURT_DRIVER_ROOT=str(empty)))
    assert ok(r) == "ran\n"
    warnings = [line for line in r.stderr.splitlines() if line.startswith("yurt: warning:")]
    assert len(warnings) == 1 and "no NVIDIA driver found" in warnings[0]


def test_cdi_device(yurt_cmd, busybox_rootfs, tmp_path, no_site):
    node = tmp_path / "vendor0"
    node.write_text("vendor node\n")
    cdi = tmp_path / "cdi"
    cdi.mkdir()
    (cdi / "vendor.json").write_text(json.dumps({
        "cdiVersion": "0.6.0", "kind": "vendor.example.com/acc",
        "devices": [{"name": "0", "containerEdits": {
            "env": ["ACC_VISIBLE=0"],
            "deviceNodes": [{"path": "/dev/acc0", "hostPath": str(node)}],
            "mounts": [{"hostPath": str(tmp_path), "containerPath": "/opt/acc", "options": ["ro", "bind"]}]}}],
    }))
    out = ok(yurt_cmd("exec", "--contain", "--cdi-dirs", cdi, "--device", "vendor.example.com/acc=0", busybox_rootfs,
                      "sh", "-c", "echo $ACC_VISIBLE; cat /dev/acc0; ls /opt/acc/cdi", env=no_site))
    assert out == "0\nvendor node\nvendor.json\n"
    r = yurt_cmd("exec", "--cdi-dirs", cdi, "--device", "vendor.example.com/acc=9", busybox_rootfs, "true",
                 env=no_site)
    assert r.returncode == 255 and "unknown CDI device vendor.example.com/acc=9" in r.stderr


def write_hooks(hooks_dir: Path, out: Path, stages=STAGES, fail: str | None = None) -> Path:
    """One hook per stage that saves its stdin (the OCI state) and where it ran."""
    hooks_dir.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    script = hooks_dir / "save-state.sh"
    script.write_text(
        "#!/bin/sh\n"
        'cat > "$2/$1.json"\n'
        'readlink /proc/self/ns/mnt > "$2/$1.mntns"\n'
        'ls / > "$2/$1.root"\n'
        'case "$1" in createRuntime) b=$(sed -n \'s/.*"bundle": "\\([^"]*\\)".*/\\1/p\' "$2/$1.json"); '
        'cp "$b/config.json" "$2/config.json";; esac\n'
    )
    script.chmod(0o755)
    for i, stage in enumerate(stages):
        hook = {"path": str(script), "args": ["save-state.sh", stage, str(out)]}
        if stage == fail:
            hook = {"path": "/bin/sh", "args": ["sh", "-c", "echo this hook fails >&2; exit 7"]}
        (hooks_dir / f"{i:02d}-{stage}.json").write_text(json.dumps(
            {"version": "1.0.0", "hook": hook, "when": {"always": True}, "stages": [stage]}))
    return hooks_dir


@pytest.mark.parametrize("pid_ns", [False, True], ids=["no-pidns", "pidns"])
def test_hooks_get_the_state_at_each_stage(yurt_cmd, busybox_rootfs, tmp_path, no_site, pid_ns):
    out = tmp_path / "out"
    hooks_dir = write_hooks(tmp_path / "hooks", out)
    marker = tmp_path / "payload-ran"
    args = ["exec", *(["--pid"] if pid_ns else []), "--hooks-dir", hooks_dir, busybox_rootfs,
            "sh", "-c", f"touch {marker}; exit 3"]
    r = yurt_cmd(*args, env=no_site)
    assert r.returncode == 3, r.stderr
    assert marker.exists()
    states = {s: json.loads((out / f"{s}.json").read_text()) for s in STAGES}
    assert {s: st["status"] for s, st in states.items()} == {
        "prestart": "creating", "createRuntime": "creating", "createContainer": "creating",
        "startContainer": "created", "poststart": "running", "poststop": "stopped"}
    pids = {st["pid"] for st in states.values()}
    ids = {st["id"] for st in states.values()}
    assert len(pids) == 1 and len(ids) == 1
    assert all(st["ociVersion"] and st["annotations"]["yurt.action"] == "exec" for st in states.values())
    host_ns = os.readlink("/proc/self/ns/mnt")
    ns = {s: (out / f"{s}.mntns").read_text().strip() for s in STAGES}
    for s in ("prestart", "createRuntime", "poststart", "poststop"):
        assert ns[s] == host_ns, s  # the runtime namespace
    assert ns["createContainer"] != host_ns and ns["startContainer"] == ns["createContainer"]
    # startContainer runs after pivot_root: it sees the image's root, not the host's
    assert "singularity" in (out / "startContainer.root").read_text().split()
    assert "singularity" not in (out / "createContainer.root").read_text().split()
    config = json.loads((out / "config.json").read_text())
    assert config["process"]["args"][-1] == f"touch {marker}; exit 3"
    assert "prestart" in config["hooks"]
    assert not os.path.exists(states["poststop"]["bundle"])  # removed after poststop


def test_failing_prestart_hook_stops_the_container(yurt_cmd, busybox_rootfs, tmp_path, no_site):
    out = tmp_path / "out"
    hooks_dir = write_hooks(tmp_path / "hooks", out, fail="prestart")
    marker = tmp_path / "payload-ran"
    r = yurt_cmd("exec", "--hooks-dir", hooks_dir, busybox_rootfs, "touch", marker, env=no_site)
    assert r.returncode == 255
    assert "yurt: error: prestart hook /bin/sh failed with exit status 7" in r.stderr
    assert "this hook fails" in r.stderr
    assert not marker.exists()
    assert not (out / "startContainer.json").exists() and not (out / "poststart.json").exists()
    assert json.loads((out / "poststop.json").read_text())["status"] == "stopped"


def test_failing_start_container_hook(yurt_cmd, busybox_rootfs, tmp_path, no_site):
    hooks_dir = write_hooks(tmp_path / "hooks", tmp_path / "out", stages=("startContainer",), fail="startContainer")
    r = yurt_cmd("exec", "--hooks-dir", hooks_dir, busybox_rootfs, "echo", "ran", env=no_site)
    assert r.returncode == 255 and r.stdout == ""
    assert "startContainer hook /bin/sh failed with exit status 7" in r.stderr


def test_poststop_failure_is_a_warning(yurt_cmd, busybox_rootfs, tmp_path, no_site):
    hooks_dir = write_hooks(tmp_path / "hooks", tmp_path / "out", stages=("poststop",), fail="poststop")
    r = yurt_cmd("exec", "--hooks-dir", hooks_dir, busybox_rootfs, "echo", "ran", env=no_site)
    assert ok(r) == "ran\n"
    assert "yurt: warning: poststop hook /bin/sh failed with exit status 7" in r.stderr
