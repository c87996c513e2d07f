"""The exec-path import contract of pyproject.toml names exactly the modules ``yurt exec`` loads.

``lint-imports`` checks that the contract's ``source_modules`` import no httpx, rich, cryptography
or tomllib, even lazily; that list is written by hand.  Here ``yurt exec`` runs a directory image
with Python's import profiler on (``PYTHONPROFILEIMPORTTIME``) and the yurt modules it loaded are
compared with the list, so a module that joins the exec path joins the contract too (and whoever
adds it sees that ``yurt exec``, run once per MPI rank, now loads one more module).  Twice: with
no config file (``yurt.configfile`` and ``yurt.readfile``, which reads the file, are not loaded), and
with a site file of plain ``key = value`` lines, as a cluster has (they are, and tomllib is still not).
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


def loaded_modules(yurt_cmd, image, env) -> set[str]:
    """Every module ``yurt exec IMAGE true`` imported, from the import profile on its stderr."""
    r = yurt_cmd("exec", image, "true", env={"PYTHONPROFILEIMPORTTIME": "1", **env})
    assert r.returncode == 0, r.stderr
    names = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines()
             if line.startswith("import time:") and line.count("|") == 2}
    assert "yurt.runtime.launcher" in names, r.stderr  # the profile was read
    return names


@pytest.mark.parametrize("site_file", [False, True], ids=["no-config-file", "plain-site-file"])
def test_exec_loads_exactly_the_contract_modules(yurt_cmd, busybox_rootfs, tmp_path, site_file):
    if os.path.lexists("/etc/yurt/yurt.toml"):
        pytest.skip("a site config file is installed: YURT_SITE_CONFIG would be ignored")
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config"), "YURT_SYSCONFDIR": str(tmp_path / "no-site"),
           "YURT_SITE_CONFIG": None}
    if site_file:
        site = tmp_path / "yurt.toml"
        site.write_text('# a site file\ndeny_binds = ["/etc/ssh"]\nsquashfs_threads = 4\n')
        env["YURT_SITE_CONFIG"] = str(site)
    names = loaded_modules(yurt_cmd, busybox_rootfs, env)
    loaded = {n for n in names if n == "yurt" or n.startswith("yurt.")}
    listed = contract_modules() - (set() if site_file else {"yurt.configfile", "yurt.readfile"})
    assert loaded == listed, (f"yurt exec loads, the contract does not list: {sorted(loaded - listed)}; "
                              f"the contract lists, yurt exec does not load: {sorted(listed - loaded)}")
    assert not names & {"tomllib", "httpx", "rich", "cryptography"}
