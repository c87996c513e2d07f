"""Hostile images, metadata and inputs, against the real kernel, as an unprivileged user.

Each image here is a copy of the busybox rootfs with one thing made hostile: a symlinked /proc,
/dev, /sys or /tmp, ``labels.json`` pointing at /etc/shadow, an env script that is a FIFO, a
100 MB ``oci-config.json``, JSON of the wrong types.  The sandbox is used as it is and also
squashed into a SIF with ``yurt build OUT.sif DIR``.  ``yurt exec``/``run`` must answer with
one ``yurt: error:`` line (``inspect`` with a clean warning) and never hang (every command
runs under a timeout) or print a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from installed_yurt import yurt_argv

pytestmark = [pytest.mark.userns]

if os.geteuid() == 0:
    pytest.skip("rootless tests run as the unprivileged test user", allow_module_level=True)

TIMEOUT = 60


def one_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """The single ``yurt: error:`` line of a failed command (no traceback, no internal error)."""
    assert result.returncode != 0, f"succeeded:\n{result.stdout}\n{result.stderr}"
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("yurt: error: "), result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"rc={result.returncode}\nstdout={result.stdout}\nstderr={result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout


def relink(root, path: str, target: str) -> None:
    full = root / path.lstrip("/")
    if full.is_symlink() or full.is_file():
        full.unlink()
    elif full.is_dir():
        shutil.rmtree(full)
    os.symlink(target, full)


@pytest.fixture
def image(busybox_rootfs, tmp_path):
    """A private copy of the busybox rootfs to make hostile."""
    dest = tmp_path / "hostile"
    shutil.copytree(busybox_rootfs, dest, symlinks=True)
    return dest


@pytest.fixture
def squash(yurt_cmd, tmp_path):
    """``squash(DIR)``: ``yurt build OUT.sif DIR``, the SIF's path."""
    if shutil.which("mksquashfs") is None:
        pytest.skip("mksquashfs missing")

    def build(tree) -> str:
        out = tmp_path / f"{os.path.basename(tree)}.sif"
        ok(yurt_cmd("build", out, tree, timeout=300))
        return str(out)

    return build


# --------------------------------------------------------------- kernel file systems through symlinks


@pytest.mark.parametrize("name", ["/proc", "/sys", "/dev", "/tmp"])
def test_symlinked_kernel_and_tmp_directories_are_refused(yurt_cmd, image, name):
    relink(image, name, "/opt")
    for args in (("exec", image, "true"), ("run", image), ("exec", "--contain", image, "true"),
                 ("exec", "--containall", image, "true")):
        one_error(yurt_cmd(*args, timeout=TIMEOUT), f"the image's {name} is a symbolic link (to /opt)")


@pytest.mark.fuse
@pytest.mark.parametrize("name", ["/proc", "/dev"])
def test_symlinked_kernel_directories_in_a_sif_are_refused(yurt_cmd, image, squash, name):
    relink(image, name, "/tmp")
    sif = squash(image)
    one_error(yurt_cmd("exec", sif, "true", timeout=TIMEOUT), f"the image's {name} is a symbolic link (to /tmp)")
    one_error(yurt_cmd("run", sif, timeout=TIMEOUT), f"the image's {name} is a symbolic link")


def test_links_leading_mounts_into_proc_are_refused(yurt_cmd, image, tmp_path):
    relink(image, "/etc/localtime", "/proc/self/attr/current")
    one_error(yurt_cmd("exec", image, "true", timeout=TIMEOUT),
              "leads the mount for /etc/localtime to /proc/self/attr/current")
    relink(image, "/etc/localtime", "/usr/share/zoneinfo/UTC")
    relink(image, "/data", "/sys/kernel")
    one_error(yurt_cmd("exec", "-B", f"{tmp_path}:/data", image, "true", timeout=TIMEOUT),
              "leads the mount for /data to /sys/kernel")


def test_var_tmp_linked_to_tmp_is_the_images_alias(yurt_cmd, image, tmp_path):
    relink(image, "/var/tmp", "/tmp")
    out = ok(yurt_cmd("exec", "--contain", image, "sh", "-c",
                      "echo x > /var/tmp/f && cat /tmp/f && readlink /var/tmp", timeout=TIMEOUT))
    assert out == "x\n/tmp\n"


@pytest.mark.parametrize("dst, hides", [("/proc", "the kernel's /proc"), ("/sys", "the kernel's /sys"),
                                        ("/dev", "the kernel's /dev"), ("/", "the whole image"),
                                        ("/proc/sys/kernel", "the kernel's proc"), ("/sys/fs/cgroup", "sys file")])
def test_binds_over_kernel_file_systems_are_usage_errors(yurt_cmd, busybox_rootfs, tmp_path, dst, hides):
    one_error(yurt_cmd("exec", "-B", f"{tmp_path}:{dst}", busybox_rootfs, "true", timeout=TIMEOUT),
              f"bind destination {dst} would hide", hides)


def test_binds_below_dev_and_lxcfs_files_still_work(yurt_cmd, busybox_rootfs, tmp_path):
    fake = tmp_path / "meminfo"
    fake.write_text("MemTotal: 1 kB\n")
    out = ok(yurt_cmd("exec", "-B", f"{fake}:/proc/meminfo", "-B", "/dev/shm:/dev/shm", busybox_rootfs,
                      "sh", "-c", "cat /proc/meminfo; test -d /dev/shm && echo shm", timeout=TIMEOUT))
    assert out == "MemTotal: 1 kB\nshm\n"


# --------------------------------------------------------------- metadata files


def test_labels_linked_to_shadow(yurt_cmd, image, squash):
    relink(image, "/.singularity.d/labels.json", "/etc/shadow")
    r = yurt_cmd("inspect", image, timeout=TIMEOUT)
    out = ok(r)
    assert "/.singularity.d/labels.json is a symbolic link, not a regular file" in out
    assert out.count("Warning:") == 1 and "root:" not in out
    ok(yurt_cmd("exec", image, "true", timeout=TIMEOUT))  # exec does not need the labels
    sif = squash(image)
    out = ok(yurt_cmd("inspect", "--json", sif, timeout=TIMEOUT))  # unsquashfs does not follow it either
    assert json.loads(out)["labels"] == {}


def test_env_script_fifo_never_blocks(yurt_cmd, image, squash):
    os.mkfifo(image / ".singularity.d" / "env" / "50-fifo.sh")
    out = ok(yurt_cmd("inspect", image, timeout=TIMEOUT))
    assert "/.singularity.d/env/50-fifo.sh is a FIFO, not a regular file" in out
    assert ok(yurt_cmd("exec", image, "echo", "fine", timeout=TIMEOUT)) == "fine\n"
    assert "fine" in ok(yurt_cmd("run", image, "echo", "fine", timeout=TIMEOUT))
    sif = squash(image)
    ok(yurt_cmd("inspect", sif, timeout=TIMEOUT))
    if os.access("/dev/fuse", os.R_OK | os.W_OK):
        assert ok(yurt_cmd("exec", sif, "echo", "fine", timeout=TIMEOUT)) == "fine\n"


def test_oci_config_of_100_megabytes(yurt_cmd, image, squash):
    with open(image / ".singularity.d" / "oci-config.json", "wb") as f:
        f.truncate(100 << 20)
    for action in (("exec", image, "true"), ("run", image)):
        one_error(yurt_cmd(*action, timeout=TIMEOUT), "/.singularity.d/oci-config.json is 104857600 bytes",
                  "over the 1048576-byte limit")
    ok(yurt_cmd("inspect", image, timeout=TIMEOUT))
    sif = squash(image)  # inside a SIF it is only a file of the squashfs: never read
    ok(yurt_cmd("inspect", sif, timeout=TIMEOUT))


def test_oci_config_linked_to_a_host_file(yurt_cmd, image, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text('{"Env": ["LEAKED=yes"]}')
    relink(image, "/.singularity.d/oci-config.json", str(secret))
    one_error(yurt_cmd("exec", image, "env", timeout=TIMEOUT),
              "/.singularity.d/oci-config.json is a symbolic link, not a regular file")
    relink(image, "/.singularity.d", str(tmp_path))  # the directory itself
    os.rename(secret, tmp_path / "oci-config.json")
    one_error(yurt_cmd("exec", image, "env", timeout=TIMEOUT), "/.singularity.d is a symbolic link")
    out = ok(yurt_cmd("inspect", image, timeout=TIMEOUT))
    assert "/.singularity.d is a symbolic link" in out and "LEAKED" not in out


@pytest.mark.parametrize("config, field", [
    ('{"Env": "PATH=/bin"}', "Env must be an array of strings, not a string"),
    ('{"config": {"Cmd": {"a": 1}}}', "Cmd must be an array of strings, not an object"),
    ('{"WorkingDir": 5}', "WorkingDir must be a string, not a number"),
    ('{"Env": ["A=b\\u0000c"]}', "Env[0] contains a NUL character"),
    ('{"Labels": ["x"]}', "Labels must be an object of strings, not an array"),
    ("[" * 100000 + "]" * 100000, "JSON nested too deeply"),
    ('{"Env": ["A=1"]', "not valid JSON"),
], ids=["env-string", "cmd-object", "workdir-number", "env-nul", "labels-array", "nested", "truncated"])
def test_oci_config_of_the_wrong_shape(yurt_cmd, image, config, field):
    (image / ".singularity.d" / "oci-config.json").write_text(config)
    for action in (("exec", image, "true"), ("run", image)):
        one_error(yurt_cmd(*action, timeout=TIMEOUT), "/.singularity.d/oci-config.json: ", field)


@pytest.mark.parametrize("labels", ['["a", "b"]', "[" * 100000 + "]" * 100000, "\udcff"],
                         ids=["array", "nested", "not-utf8"])
def test_labels_of_the_wrong_shape_are_an_inspect_warning(yurt_cmd, image, labels):
    (image / ".singularity.d" / "labels.json").write_bytes(labels.encode("utf-8", "surrogateescape"))
    out = ok(yurt_cmd("inspect", image, timeout=TIMEOUT))
    assert out.count("Warning: labels.json: ") == 1 and "labels ignored" in out
    assert json.loads(ok(yurt_cmd("inspect", "--json", "--labels", image, timeout=TIMEOUT))) is not None


# --------------------------------------------------------------- text inputs


def test_env_file_that_is_not_text(yurt_cmd, busybox_rootfs, tmp_path):
    bad = tmp_path / "bad.env"
    bad.write_bytes(b"A=1\nB=\xff\xfe\n")
    one_error(yurt_cmd("exec", "--env-file", bad, busybox_rootfs, "true", timeout=TIMEOUT),
              f"--env-file {bad}:2: not UTF-8 text (byte 0xff)")
    bad.write_bytes(b"A=x\x00y\n")
    one_error(yurt_cmd("exec", "--env-file", bad, busybox_rootfs, "true", timeout=TIMEOUT),
              f"--env-file {bad}:1: contains a NUL byte")


@pytest.mark.parametrize("data, message", [(b"", "standard input is empty"), (b"\n", "standard input is empty"),
                                           (b"a\xff", "not UTF-8 text"), (b"a\x00b", "NUL byte")])
def test_registry_login_password_stdin(tmp_path, data, message):
    proc = subprocess.run([*yurt_argv(), "registry", "login", "-u", "u", "--password-stdin", "localhost:1"],
                          input=data, capture_output=True, timeout=TIMEOUT, env={**os.environ, "HOME": str(tmp_path)})
    result = subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())
    one_error(result, "--password-stdin: ", message)
    assert not (tmp_path / ".config" / "yurt" / "auth.json").exists()


@pytest.mark.parametrize("recipe, name, message", [
    (b"Bootstrap: scratch\n%post\n  echo \xff\n", "x.def", "the definition file {}:3: not UTF-8 text (byte 0xff)"),
    (b"Bootstrap: scratch\n%labels\n  A\x00 b\n", "x.def", "the definition file {}:3: contains a NUL byte"),
    (b"FROM scratch\nLABEL a\x00=b\n", "Dockerfile", "the Dockerfile {}:2: contains a NUL byte"),
    (b'FROM scratch\nCMD ["a\\u0000"]\n', "Dockerfile", "Dockerfile:2: a NUL character"),
])
def test_recipes_that_are_not_text(yurt_cmd, tmp_path, recipe, name, message):
    path = tmp_path / name
    path.write_bytes(recipe)
    one_error(yurt_cmd("build", "--sandbox", tmp_path / "out", path, timeout=TIMEOUT), message.format(path))
    assert not (tmp_path / "out").exists()
