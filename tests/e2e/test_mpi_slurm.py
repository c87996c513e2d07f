"""MPI in yurt containers under a real ``mpirun`` and a real Slurm, as the unprivileged test user.

Root starts a single-node Slurm (``slurm`` fixture: munged, slurmctld, slurmd, no systemd) and
builds, once per machine, two images from the debootstrapped bookworm tree (cached under
``/var/tmp/yurt-ci/mpi-<hash>``):

* ``ompi.sif``: Debian's Open MPI 4.1 (``openmpi-bin``, ``libopenmpi3``) and ``mpiprog`` (hello,
  ping-pong, allreduce: ``tests/e2e/mpi/mpiprog.c``, compiled on the host with ``mpicc``): the hybrid
  model, the container's MPI talking to the host's ``mpirun`` (ORTE/PMIx) or ``srun --mpi=pmix``;
* ``nompi.sif``: the same program without any MPI library: it runs only with ``--mpi=host``.

Every launch is bounded by ``timeout`` so a hang fails the test instead of blocking CI.  The
communicator size is checked (an MPI that cannot reach its launcher runs N singletons, silently).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from installed_yurt import yurt_argv

pytestmark = [pytest.mark.e2e, pytest.mark.root, pytest.mark.requires("mpirun", "mpicc")]

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "mpi" / "mpiprog.c"
CACHE = Path(os.environ.get("YURT_TEST_CACHE", "/var/tmp/yurt-ci"))
OMPI_DEF = """\
Bootstrap: localimage
From: {base}

%files
    {prog} /usr/local/bin/mpiprog

%post
    apt-get update && apt-get install -y --no-install-recommends openmpi-bin libopenmpi3
    rm -rf /var/lib/apt/lists/*
"""
NOMPI_DEF = """\
Bootstrap: localimage
From: {base}

%files
    {prog} /usr/local/bin/mpiprog
"""
BIG = 8 << 20  # ping-pong up to 8 MiB: with one user namespace per rank, Open MPI 4.1's CMA fallback hangs at 2-4 MiB


class MPIImages:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ompi = directory / "ompi.sif"
        self.nompi = directory / "nompi.sif"


def _run(argv: list[str], timeout: float = 900, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, argv))} failed ({r.returncode}):\n{r.stdout[-2000:]}\n" \
                              f"{r.stderr[-2000:]}"
    return r


@pytest.fixture(scope="session")
def mpi_images(debian_rootfs: Path) -> MPIImages:
    """Build (or reuse) the two images; the key covers the program, the recipes and the base tree."""
    key = hashlib.sha256(SOURCE.read_bytes() + OMPI_DEF.encode() + NOMPI_DEF.encode()
                         + (debian_rootfs / "etc" / "os-release").read_bytes()).hexdigest()[:16]
    final = CACHE / f"mpi-{key}"
    if (final / "ompi.sif").is_file() and (final / "nompi.sif").is_file():
        return MPIImages(final)
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mpi-", dir=CACHE))
    try:
        prog = work / "mpiprog"
        _run(["mpicc", "-O2", "-o", str(prog), str(SOURCE)])
        for name, recipe in (("ompi", OMPI_DEF), ("nompi", NOMPI_DEF)):
            deffile = work / f"{name}.def"
            deffile.write_text(recipe.format(base=debian_rootfs, prog=prog))
            _run([*yurt_argv(), "build", str(work / f"{name}.sif"), str(deffile)], cwd=str(work))
        for p in work.iterdir():
            p.chmod(0o755 if p.name == "mpiprog" else 0o644)
        work.chmod(0o755)
        shutil.rmtree(final, ignore_errors=True)
        work.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return MPIImages(final)


@pytest.fixture
def user_dir(test_user) -> Path:
    """A working directory the test user owns (outside /tmp: also checks the cwd is bound)."""
    d = Path(tempfile.mkdtemp(prefix="yurt-mpi-", dir="/var/tmp"))
    os.chown(d, test_user.pw.pw_uid, test_user.pw.pw_gid)
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _yurt(test_user) -> list[str]:
    return yurt_argv()


def _user_env(test_user) -> dict[str, str]:
    return {"HOME": test_user.pw.pw_dir, "USER": test_user.name,
            "LOGNAME": test_user.name, "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C.UTF-8"}


def mpirun_as(test_user, n: int, argv: list[str], timeout: int = 120, cwd: Path | str = "/tmp",
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``mpirun -n N ARGV`` as the test user, killed (with its ranks) after ``timeout`` seconds."""
    pairs = [f"{k}={v}" for k, v in {**_user_env(test_user), **(env or {})}.items()]
    cmd = ["runuser", "-u", test_user.name, "--", "env", "-i", *pairs, "timeout", "-k", "10", str(timeout),
           "mpirun", "-n", str(n), *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 60, cwd=str(cwd),
                          stdin=subprocess.DEVNULL)


def srun_as(slurm, test_user, argv: list[str], timeout: int = 120, cwd: Path | str = "/tmp",
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return slurm.run_as(test_user.name, ["timeout", "-k", "10", str(timeout), *argv], timeout=timeout + 60,
                        cwd=cwd, env={**_user_env(test_user), **(env or {})})


def hello_ranks(r: subprocess.CompletedProcess, n: int) -> None:
    """Exactly ranks 0..n-1, each of a communicator of size n (not n singletons)."""
    assert r.returncode == 0, f"rc={r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    found = re.findall(r"^hello rank (\d+) of (\d+) on ", r.stdout, re.M)
    assert sorted(int(rank) for rank, _ in found) == list(range(n)), r.stdout
    assert {int(size) for _, size in found} == {n}, r.stdout
    assert f"done {n}" in r.stdout


def pingpong_table(r: subprocess.CompletedProcess) -> dict[int, tuple[float, float]]:
    assert r.returncode == 0, f"rc={r.returncode} (124: hung and killed)\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    table = {int(b): (float(lat), float(bw))
             for b, lat, bw in re.findall(r"^pingpong (\d+) ([\d.]+) ([\d.]+)$", r.stdout, re.M)}
    assert "done 2" in r.stdout
    return table


# --- hybrid model ----------------------------------------------------------------------------------

def test_mpirun_hello_in_containers(mpi_images, test_user, user_dir):
    r = mpirun_as(test_user, 2, [*_yurt(test_user), "exec", mpi_images.ompi, "mpiprog", "hello"], cwd=user_dir)
    hello_ranks(r, 2)


def test_srun_pmix_hello_in_containers(mpi_images, slurm, test_user, user_dir):
    r = srun_as(slurm, test_user, ["srun", "-n", "2", "--mpi=pmix", *_yurt(test_user), "exec", mpi_images.ompi,
                                   "mpiprog", "hello"], cwd=user_dir)
    hello_ranks(r, 2)
    # slurmd's spool (with the PMIx data store) is under /var/spool: yurt binds it, so PMIx finds it
    assert "PMIX ERROR" not in r.stderr, r.stderr[-3000:]


@pytest.mark.parametrize("launcher", ["mpirun", "srun"])
def test_pingpong_with_large_messages_does_not_hang(mpi_images, slurm, test_user, user_dir, launcher):
    """Messages of 4 MiB and 8 MiB between ranks in separate user namespaces complete, with correct data."""
    prog = [*_yurt(test_user), "exec", mpi_images.ompi, "mpiprog", "pingpong", str(BIG), "40"]
    if launcher == "mpirun":
        r = mpirun_as(test_user, 2, prog, timeout=180, cwd=user_dir)
    else:
        r = srun_as(slurm, test_user, ["srun", "-n", "2", "--mpi=pmix", *prog], timeout=180, cwd=user_dir)
    table = pingpong_table(r)
    assert {4 << 20, BIG} <= set(table), r.stdout
    assert all(bw > 0 for _, bw in table.values())


@pytest.mark.parametrize("launcher", ["mpirun", "srun"])
def test_sharens_ranks_share_one_container_and_single_copy(mpi_images, slurm, test_user, user_dir, launcher):
    """--sharens: the ranks of a step join one container (one user namespace), so Open MPI keeps its CMA
    single-copy path (yurt does not turn it off there) and 8 MiB messages go through."""
    yurt = [*_yurt(test_user), "exec", "--sharens", mpi_images.ompi]
    show = 'echo "ns $(readlink /proc/self/ns/user) cma=${OMPI_MCA_btl_vader_single_copy_mechanism:-on}"'
    probe = [*yurt, "sh", "-c", show]
    pingpong = [*yurt, "mpiprog", "pingpong", str(BIG), "40"]
    if launcher == "mpirun":
        ran = [mpirun_as(test_user, 2, probe, cwd=user_dir),
               mpirun_as(test_user, 2, pingpong, timeout=180, cwd=user_dir)]
    else:
        ran = [srun_as(slurm, test_user, ["srun", "-n", "2", "--mpi=pmix", *c], timeout=180, cwd=user_dir)
               for c in (probe, pingpong)]
    assert ran[0].returncode == 0, ran[0].stderr[-3000:]
    lines = re.findall(r"^ns (\S+) cma=(\S+)$", ran[0].stdout, re.M)
    assert len(lines) == 2 and lines[0] == lines[1] and lines[0][1] == "on", ran[0].stdout
    table = pingpong_table(ran[1])
    assert BIG in table


def test_sbatch_script_runs_ranks_in_containers(mpi_images, slurm, test_user, user_dir):
    yurt = " ".join(_yurt(test_user))
    script = user_dir / "job.sh"
    script.write_text(f"""#!/bin/sh
#SBATCH --ntasks=2
#SBATCH --output={user_dir}/job.out
#SBATCH --time=5
set -e
srun --mpi=pmix {yurt} exec {mpi_images.ompi} mpiprog hello
srun --mpi=pmix {yurt} exec {mpi_images.ompi} mpiprog allreduce 4096 50
export YURT_LOCAL_CACHEDIR={user_dir}/node-cache
{yurt} srun --prestage --image {mpi_images.ompi} --mpi=pmix -- mpiprog hello
ls {user_dir}/node-cache/unpacked | wc -l | sed 's/^/unpacked trees: /'
""")
    os.chown(script, test_user.pw.pw_uid, test_user.pw.pw_gid)
    r = srun_as(slurm, test_user, ["sbatch", "--wait", "--parsable", str(script)], timeout=180, cwd=user_dir)
    out = (user_dir / "job.out").read_text() if (user_dir / "job.out").exists() else "(no job.out)"
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}\n{out}"
    assert len(re.findall(r"^hello rank \d of 2 ", out, re.M)) == 4, out
    assert re.search(r"^allreduce 4096 [\d.]+$", out, re.M), out
    assert out.count("done 2") == 3, out
    assert "unpacked trees: 1" in out, out  # yurt srun --prestage: one tree per node, shared by the ranks


def test_yurt_srun_front_end(mpi_images, slurm, test_user, user_dir):
    """Pyxis-style: one container per node for the step (one user namespace), --mounts bound, MPI works."""
    r = srun_as(slurm, test_user, [*_yurt(test_user), "srun", "--image", str(mpi_images.ompi), "--mounts",
                                   f"{user_dir}:/data:ro", "-n", "2", "--mpi=pmix", "--", "sh", "-c",
                                   "ls -d /data >/dev/null && echo userns $(readlink /proc/self/ns/user) && "
                                   "exec mpiprog hello"], cwd=user_dir)
    hello_ranks(r, 2)
    namespaces = re.findall(r"^userns (\S+)$", r.stdout, re.M)
    assert len(namespaces) == 2 and namespaces[0] == namespaces[1], r.stdout


# --- bind model ------------------------------------------------------------------------------------

def test_mpi_host_binds_the_host_library(mpi_images, slurm, test_user, user_dir):
    yurt = _yurt(test_user)
    without = mpirun_as(test_user, 2, [*yurt, "exec", mpi_images.nompi, "mpiprog", "hello"], timeout=60,
                        cwd=user_dir)
    assert without.returncode != 0  # the image has no libmpi.so.40
    assert "libmpi.so.40" in without.stdout + without.stderr
    r = mpirun_as(test_user, 2, [*yurt, "exec", "--mpi=host", mpi_images.nompi, "mpiprog", "hello"], cwd=user_dir)
    hello_ranks(r, 2)
    r = srun_as(slurm, test_user, ["srun", "-n", "2", "--mpi=pmix", *yurt, "exec", "--mpi=host", mpi_images.nompi,
                                   "mpiprog", "hello"], cwd=user_dir)
    hello_ranks(r, 2)
    # an image with its own, compatible Open MPI: the host's replaces it
    r = mpirun_as(test_user, 2, [*yurt, "exec", "--mpi=host", mpi_images.ompi, "mpiprog", "pingpong", str(BIG),
                                 "20"], timeout=180, cwd=user_dir)
    assert BIG in pingpong_table(r)


def test_mpi_host_refuses_an_mpich_abi_image(test_user, busybox_rootfs, user_dir):
    """A container built with MPICH (libmpi.so.12) cannot use the host's Open MPI: one clear line, exit 255."""
    root = user_dir / "mpich-image"
    subprocess.run(["cp", "-a", str(busybox_rootfs), str(root)], check=True)
    lib = root / "usr" / "lib"
    lib.mkdir(parents=True, exist_ok=True)
    (lib / "libmpich.so.12.2.0").write_bytes(b"\x7fELF not really; MPICH Version:\t4.0.2\n")
    (lib / "libmpi.so.12").symlink_to("libmpich.so.12.2.0")
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    r = test_user.yurt("exec", "--mpi=host", root, "/bin/true", timeout=60)
    assert r.returncode == 255, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("yurt: error:")]
    assert len(lines) == 1, r.stderr
    assert "MPICH-ABI" in lines[0] and "Open MPI" in lines[0] and "--mpi=host" in lines[0]
