"""The exec-path import contract of pyproject.toml names exactly the modules ``yurt exec`` loads.

``lint-imports`` checks that the contract's ``source_modules`` import no httpx, rich, cryptography
or tomllib, even lazily; that list is written by hand.  Here ``yurt exec`` runs a directory image
with Python's import profiler on (``PYTHONPROFILEIMPORTTIME``) and the yurt modules it loaded are
compared with the list, so a module that joins the exec path joins the contract too (and whoever
adds it sees that ``yurt exec``, run once per MPI rank, now loads one more module).
"""

from __future__ import annotations

import os
import tomllib

import pytest
from installed_yurt import REPO_ROOT

pytestmark = [pytest.mark.userns]

if os.geteuid() == 0:
    pytest.skip("rootless tests run as the unprivileged test user", allow_module_level=True)


def contract_modules() -> set[str]:
    with open(REPO_ROOT / "pyproject.toml", "rb") as f:
        contracts = tomllib.load(f)["tool"]["importlinter"]["contracts"]
    (exec_path,) = [c for c in contracts if c.get("id") == "exec-path"]
    assert exec_path["type"] == "forbidden" and exec_path["as_packages"] is False
    return set(exec_path["source_modules"])


def test_exec_loads_exactly_the_contract_modules(yurt_cmd, busybox_rootfs, tmp_path):
    if os.path.lexists("/etc/yurt/yurt.toml"):
        pytest.skip("a site config file is installed: yurt exec also loads yurt.configfile to read it")
    env = {"PYTHONPROFILEIMPORTTIME": "1", "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "YURT_SITE_CONFIG": None, "YURT_SYSCONFDIR": str(tmp_path / "no-site")}
    r = yurt_cmd("exec", busybox_rootfs, "true", env=env)
    assert r.returncode == 0, r.stderr
    loaded = set()
    for line in r.stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name == "yurt" or name.startswith("yurt."):
                loaded.add(name)
    assert "yurt.runtime.launcher" in loaded, r.stderr  # the profile was read
    listed = contract_modules()
    assert loaded == listed, (f"yurt exec loads, the contract does not list: {sorted(loaded - listed)}; "
                              f"the contract lists, yurt exec does not load: {sorted(listed - loaded)}")
