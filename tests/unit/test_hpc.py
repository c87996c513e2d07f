"""yurt.hpc: ELF dependencies, MPI identification and ABI rules, the ld.so cache parser, yurt srun parsing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from yurt.errors import UsageError
from yurt.hpc import elf, mpi, srun
from yurt.spec import NS_MOUNT, NS_USER, ContainerSpec, Process


def test_read_dynamic_of_the_running_python_and_of_a_text_file(tmp_path):
    info = elf.read_dynamic(os.path.realpath(sys.executable))
    assert info is not None and any(n.startswith("libc.so") for n in info.needed)
    text = tmp_path / "x.so"
    text.write_text("not an ELF file")
    assert elf.read_dynamic(str(text)) is None
    assert elf.read_dynamic(str(tmp_path / "missing")) is None


def test_ld_cache_parser_agrees_with_ldconfig():
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    if not os.path.exists("/etc/ld.so.cache") or not os.access(ldconfig, os.X_OK):
        pytest.skip("no ld.so cache or ldconfig here")
    with open("/etc/ld.so.cache", "rb") as f:
        ours = mpi.parse_ld_cache(f.read())
    out = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, check=True).stdout
    theirs = [(line.split(" (")[0].strip(), line.rsplit("=> ", 1)[1].strip()) for line in out.splitlines()
              if "=> " in line]
    assert ours and sorted(ours) == sorted(theirs)


@pytest.mark.parametrize(("names", "family", "abi"), [
    (["libmpi.so.40", "libmpi.so.40.30.4"], "openmpi", (40, 30)),
    (["libmpi.so.12", "libmpich.so.12.2.0"], "mpich", (12, None)),
    (["libmpi.so.12", "libmpi.so.12.1.11"], "mpich", (12, 1)),
])
def test_identify_by_names(names, family, abi):
    lib = mpi.identify("/nonexistent/" + names[-1], names[:-1])
    assert (lib.family, lib.abi) == (family, abi)


def _lib(family, major, minor, version=None):
    return mpi.MPILibrary("/x", f"libmpi.so.{major}", family, (major, minor), version)


def test_abi_rules():
    host = _lib("openmpi", 40, 30, "4.1.4")
    assert mpi.incompatibility(host, None) is None  # an image without MPI uses the host's
    assert mpi.incompatibility(host, _lib("openmpi", 40, 20)) is None  # 4.0 binary on a 4.1 host
    assert "older" in mpi.incompatibility(_lib("openmpi", 40, 20), _lib("openmpi", 40, 30))
    reason = mpi.incompatibility(host, _lib("mpich", 12, 1))
    assert "MPICH-ABI" in reason and "Open MPI 4.1.4" in reason
    assert mpi.incompatibility(_lib("mpich", 12, 1), _lib("mpich", 12, 3)) is None  # one MPICH ABI
    assert "different ABI" in mpi.incompatibility(_lib("openmpi", 40, 30), _lib("openmpi", 20, 10))


def test_host_closure_leaves_glibc_to_the_image():
    from yurt.runtime.gpu import ld_cache

    cache = dict(reversed(ld_cache("/")))
    if "libmpi.so.40" not in cache and "libmpi.so.12" not in cache:
        pytest.skip("no host MPI library (openmpi-bin / libopenmpi3)")
    found = mpi.closure(cache.get("libmpi.so.40") or cache["libmpi.so.12"], cache)
    assert any(name.startswith("libmpi.so.") for name in found.libraries)
    assert not any(name.startswith(mpi.GLIBC) for name in found.libraries)
    assert not found.unresolved


def test_host_library_found_on_ld_library_path_first(tmp_path):
    """A module-loaded MPI lives on LD_LIBRARY_PATH, not in the ld.so cache: it is found there first."""
    from yurt.runtime.gpu import ld_cache

    cache = dict(reversed(ld_cache("/")))
    real = cache.get("libmpi.so.40")
    if real is None:
        pytest.skip("no host Open MPI library (libopenmpi3)")
    module = tmp_path / "modules" / "openmpi" / "lib"
    module.mkdir(parents=True)
    (module / "libmpi.so.40").symlink_to(real)
    (module / "README").write_text("not a library")
    env = {"LD_LIBRARY_PATH": f"relative/dir::{module}:/nonexistent"}
    assert mpi.library_path_entries(env) == [("libmpi.so.40", str(module / "libmpi.so.40"))]
    lib = mpi.find_host_library(env)
    assert lib.family == "openmpi" and lib.path == os.path.realpath(real)
    with pytest.raises(UsageError, match="YURT_MPI_LIBRARY"):
        mpi.find_host_library({"YURT_MPI_LIBRARY": str(tmp_path / "missing.so")})


def _spec():
    return ContainerSpec(process=Process(args=["/bin/true"]), namespaces=[NS_USER, NS_MOUNT])


def test_hybrid_edits_for_ranks(tmp_path):
    pmix = tmp_path / "pmix.1.0"
    pmix.mkdir()
    spec = _spec()
    mpi.hybrid_edits(spec, {"PMIX_RANK": "0", "PMIX_SERVER_TMPDIR": str(pmix) + "/"})
    assert spec.process.env[mpi.SINGLE_COPY] == "none"
    assert [m.source for m in spec.mounts] == [str(pmix)]
    mpi.for_shared_userns(spec)  # --sharens: CMA works again
    assert mpi.SINGLE_COPY not in spec.process.env
    spec = _spec()
    mpi.hybrid_edits(spec, {"PMIX_RANK": "0", mpi.SINGLE_COPY: "cma"})  # the user's choice stands
    assert mpi.SINGLE_COPY not in spec.process.env
    spec = _spec()
    mpi.hybrid_edits(spec, {"HOME": "/root"})  # not a rank
    assert spec.process.env == {} and spec.mounts == []


def test_mpi_host_arranges_the_in_container_abi_check(tmp_path, monkeypatch):
    """--mpi=host leaves the launcher a check (YurtExtras.container_checks) that refuses an image of another ABI."""
    from yurt.errors import RuntimeSetupError
    from yurt.runtime.gpu import ld_cache

    real = dict(reversed(ld_cache("/"))).get("libmpi.so.40")
    if real is None:
        pytest.skip("no host Open MPI library (libopenmpi3)")
    spec = _spec()
    mpi.plan_edits(spec, {"YURT_MPI_LIBRARY": real}, host=True)
    assert mpi.ANNOTATION in spec.annotations and len(spec.extras.container_checks) == 1
    check = spec.extras.container_checks[0]
    check()  # run here, "/" is the host itself: the same library, nothing to refuse
    monkeypatch.setattr(mpi, "image_library", lambda root: mpi.identify("/usr/lib/libmpi.so.12", ["libmpi.so.12"],
                                                                       read_version=False))
    with pytest.raises(RuntimeSetupError, match="--mpi=host"):
        check()


def test_srun_front_end_splits_options():
    from yurt.cli.actions import FLAGS

    req = srun.parse(["--image", "a.sif", "-n", "4", "--mpi=pmix", "--mounts", "/s:/d:ro", "--sharens",
                      "--exec-mpi=host", "--env", "A=1", "-N2", "--", "app", "--flag"], FLAGS)
    cmd = srun.main_command(req, ["yurt"])
    assert cmd == ["srun", "-n", "4", "--mpi=pmix", "-N2", "yurt", "exec", "--sharens", "--mpi=host", "--env",
                   "A=1", "--bind=/s:/d:ro", "a.sif", "app", "--flag"]
    req.prestage = True
    assert srun.prestage_command(req, ["yurt"]) == ["srun", "-N2", "--ntasks-per-node=1", "yurt", "exec",
                                                    "--unsquash", "a.sif", "/bin/true"]
    # One container per node for the step's ranks by default, as Pyxis; not with --no-sharens or limits.
    assert srun.main_command(srun.parse(["--image", "a.sif", "-n", "2", "--", "app"], FLAGS), ["yurt"]) == [
        "srun", "-n", "2", "yurt", "exec", "--sharens", "a.sif", "app"]
    assert "--sharens" not in srun.main_command(srun.parse(["--image", "a.sif", "--no-sharens", "--", "app"],
                                                           FLAGS), ["yurt"])
    assert "--sharens" not in srun.main_command(srun.parse(["--image", "a.sif", "--memory", "1G", "--", "app"],
                                                           FLAGS), ["yurt"])
    with pytest.raises(UsageError):
        srun.parse(["--image", "a.sif", "app"], FLAGS)  # no --
    with pytest.raises(UsageError):
        srun.parse(["-n", "2", "--", "app"], FLAGS)  # no image
