"""spython (the Python API many HPC tools use to drive Singularity/Apptainer), from PyPI, on yurt.

spython runs the ``singularity`` command it finds on PATH: here the link to yurt-singularity (see
clients.py).  Each test runs a short script with the clients' venv interpreter, as a user's program
would, and checks what spython handed back and what is on disk.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
from clients import ok, run

pytestmark = [pytest.mark.e2e, pytest.mark.userns, pytest.mark.requires("mksquashfs", "unsquashfs")]

if os.geteuid() == 0:
    pytest.skip("rootless tests run as the unprivileged test user", allow_module_level=True)


def spython(world, tmp_path: Path, body: str, timeout: float = 240) -> dict:
    """Run ``body`` (Python using ``from spython.main import Client``) and return the JSON it prints last."""
    script = tmp_path / "driver.py"
    script.write_text("import json, sys\nfrom spython.main import Client\n" + textwrap.dedent(body))
    r = ok(run([world.venv / "bin" / "python", script], world.env(tmp_path / "home"), tmp_path, timeout=timeout))
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_execute_and_run(client_world, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_text("from the host\n")
    out = spython(client_world, tmp_path, f"""
        img = {str(client_world.sif)!r}
        res = {{}}
        res["exec"] = Client.execute(img, ["bash", "-c", "echo $BASH_VERSION; cat /data/in.txt"],
                                     bind=[{str(data)!r} + ":/data"], return_result=True)
        res["fail"] = Client.execute(img, ["sh", "-c", "echo out; exit 3"], return_result=True)
        res["run"] = Client.run(img, args=["echo", "ran", "with", "args"], return_result=True)
        res["version"] = Client.version()
        print(json.dumps(res))
    """)
    assert out["exec"]["return_code"] == 0, out
    lines = "".join(out["exec"]["message"]).splitlines()
    assert lines[0].startswith("5.") and lines[1] == "from the host", out
    assert out["fail"]["return_code"] == 3, out
    assert out["run"]["return_code"] == 0 and "ran with args" in "".join(out["run"]["message"]), out
    assert out["version"].startswith("apptainer version 1."), out


def test_inspect(client_world, tmp_path):
    out = spython(client_world, tmp_path, f"""
        print(json.dumps(Client.inspect({str(client_world.sif)!r})))
    """)
    # spython unwraps Apptainer's {"data": {"attributes": ...}, "type": "container"}
    attrs = out["attributes"]
    assert "runscript" in attrs and "/bin/sh" in attrs["runscript"], out
    labels = attrs["labels"]
    assert isinstance(labels, dict) and labels, out


def test_pull_and_build(client_world, tmp_path):
    recipe = tmp_path / "Singularity.def"
    recipe.write_text(f"Bootstrap: localimage\nFrom: {client_world.sif}\n\n"
                      "%post\n    echo built-by-spython > /built.txt\n\n"
                      "%runscript\n    cat /built.txt\n")
    out = spython(client_world, tmp_path, f"""
        pulled = Client.pull("docker://{client_world.ref}", name="pulled.sif", pull_folder={str(tmp_path)!r})
        built = Client.build(recipe={str(recipe)!r}, image={str(tmp_path / 'built.sif')!r}, sudo=False)
        from_ref = Client.build(recipe="docker://{client_world.ref}", image={str(tmp_path / 'ref.sif')!r},
                                sudo=False)
        ran = Client.run(built, return_result=True)
        print(json.dumps({{"pulled": pulled, "built": built, "from_ref": from_ref, "ran": ran}}))
    """)
    assert out["pulled"] == str(tmp_path / "pulled.sif") and (tmp_path / "pulled.sif").is_file(), out
    assert out["built"] == str(tmp_path / "built.sif") and (tmp_path / "built.sif").is_file(), out
    assert out["from_ref"] == str(tmp_path / "ref.sif") and (tmp_path / "ref.sif").is_file(), out
    assert out["ran"]["return_code"] == 0 and "built-by-spython" in "".join(out["ran"]["message"]), out
    # the pulled SIF is a real image of the registry's content
    ok(run(["apptainer", "exec", tmp_path / "pulled.sif", "bash", "-c", "test -x /bin/bash"],
           client_world.env(tmp_path / "home"), tmp_path))


def test_instances(client_world, tmp_path):
    out = spython(client_world, tmp_path, f"""
        inst = Client.instance({str(client_world.sif)!r}, name="spy1")
        listed = [i.name for i in Client.instances(quiet=True)]
        one = Client.instances("spy1", quiet=True)
        inside = Client.execute(inst, ["sh", "-c", "echo in-instance; cat /proc/1/cmdline | tr '\\\\0' ' '"],
                                return_result=True)
        stopped = inst.stop()
        after = Client.instances(quiet=True)
        print(json.dumps({{"name": inst.name, "listed": listed, "one": getattr(one, "name", None),
                           "inside": inside, "stopped": stopped,
                           "after": [i.name for i in after] if isinstance(after, list) else after}}))
    """)
    assert out["name"] == "spy1" and "spy1" in out["listed"] and out["one"] == "spy1", out
    assert out["inside"]["return_code"] == 0 and "in-instance" in "".join(out["inside"]["message"]), out
    assert out["stopped"] == 0, out
    assert "spy1" not in (out["after"] or []), out
