"""Shared pieces of the registry-based benchmarks (bench/pull, bench/build): standard library only.

A Debian bookworm minbase root file system (debootstrap, made once as root and cached), packed in
Python as an OCI image layout, pushed with ``skopeo copy`` to a ``docker-registry`` started on a
free 127.0.0.1 port (plain HTTP, plus a TLS instance on the same storage for ch-image, which only
speaks https: peer-baselines #4), timed commands run in their own process group, and the yurt
command under test (``--yurt`` or a fresh regular install of this tree).  The scripts import it
with their own directory on ``sys.path``; messages are prefixed with ``PROG`` (set by the script).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

PROG = "bench"  # prefix of messages; each script sets its own name
REPO = Path(__file__).resolve().parent.parent
SYS_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # distro first (peer-baselines #2)
REGISTRY_BIN = "docker-registry"
MIRROR_ENV = "YURT_BENCH_DEBIAN_MIRROR"  # --mirror's default; else the machine's apt sources (none built in)
MIRROR_HELP = f"Debian mirror for debootstrap (default ${MIRROR_ENV}, else the one this machine's apt uses)"
SUITE = "bookworm"
REPOSITORY = "bench/debian"  # two components: udocker prepends library/ to single names (peer-baselines #18)
TAG = "bookworm"
COMMAND_TIMEOUT = 1800

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


class Skip(Exception):
    pass


class Fail(Exception):
    pass



# ---------------------------------------------------------------------- helpers


def tail(text: str, lines: int = 3) -> str:
    out = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return " | ".join(out[-lines:]) if out else "(no output)"


def which(tool: str, *extra: str) -> str | None:
    found = shutil.which(tool, path=SYS_PATH + os.pathsep + os.environ.get("PATH", ""))
    if found:
        return found
    for candidate in extra:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_bytes(path: Path) -> int:
    """Apparent size of the regular files under ``path`` (hard links once)."""
    total, seen = 0, set()
    if path.is_file():
        return path.stat().st_size
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if st.st_nlink > 1:
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def unmount_under(path: Path) -> None:
    """Lazily unmount whatever a tool left mounted under ``path`` (podman's overlay home)."""
    prefix = str(path).rstrip("/") + "/"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return
    points = []
    for line in lines:
        fields = line.split()
        if len(fields) > 4:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            if point.startswith(prefix) or point == str(path):
                points.append(point)
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def remove_tree(path: Path) -> None:
    if not path.exists():
        return
    unmount_under(path)
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():  # read-only directories left by a tool
        subprocess.run(["chmod", "-R", "u+rwx", str(path)], capture_output=True, check=False)
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class Result:
    rc: int
    elapsed: float
    lines: list[tuple[float, str]]

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


def run_timed(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = COMMAND_TIMEOUT) -> Result:
    """Run ``argv`` in its own process group; wall time, and each output line with its time."""
    lines: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    timer = threading.Timer(timeout, lambda: _kill_group(proc))
    timer.start()
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.append((time.perf_counter() - t0, raw.decode(errors="replace").rstrip("\n")))
        rc = proc.wait()
        elapsed = time.perf_counter() - t0
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        timer.cancel()
        if proc.stdout is not None:
            proc.stdout.close()
    if rc in (-signal.SIGKILL,) and elapsed >= timeout:
        lines.append((elapsed, f"(killed after {timeout:.0f} s)"))
    return Result(rc, elapsed, lines)


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.wait()


def check(result: Result, what: str) -> Result:
    if result.rc != 0:
        raise Fail(f"{what}: exit status {result.rc}: {tail(result.text)}")
    return result


# ---------------------------------------------------------------------- the image


def default_mirror() -> str | None:
    """``$YURT_BENCH_DEBIAN_MIRROR``, else the Debian mirror for ``SUITE`` in this machine's apt sources
    (yurt/builder/aptsources.py, standard library only, loaded by its path: no yurt install is needed)."""
    if os.environ.get(MIRROR_ENV, "").strip():
        return os.environ[MIRROR_ENV].strip()
    import importlib.util

    spec = importlib.util.spec_from_file_location("_yurt_aptsources", REPO / "yurt" / "build" / "aptsources.py")
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found = module.debian_mirror(SUITE)
    return found.uri if found else None


def make_rootfs(dest: Path, mirror: str | None) -> None:
    """debootstrap --variant=minbase bookworm, then tidy it like the Docker Hub debian image."""
    if os.geteuid() != 0:
        sys.exit(f"{PROG}: debootstrap needs root; run as root once, or give --rootfs DIR (wanted {dest})")
    mirror = mirror or default_mirror()
    if not mirror:
        sys.exit(f"{PROG}: no Debian mirror for debootstrap: give --mirror URL or set ${MIRROR_ENV} "
                 f"(this machine's apt sources name none for {SUITE}), or give --rootfs DIR")
    debootstrap = which("debootstrap")
    if not debootstrap:
        sys.exit(f"{PROG}: debootstrap not installed (apt-get install debootstrap), or give --rootfs DIR")
    tmp = dest.with_name(dest.name + ".tmp")
    remove_tree(tmp)
    log = dest.with_name(dest.name + ".debootstrap.log")
    print(f"{PROG}: debootstrap --variant=minbase {SUITE} {tmp} {mirror} (log {log})", file=sys.stderr)
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.run([debootstrap, "--variant=minbase", SUITE, str(tmp), mirror], stdout=out,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        sys.exit(f"{PROG}: debootstrap failed ({proc.returncode}): {tail(log.read_text(errors='replace'))}")
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*"):
        for p in tmp.glob(pattern):
            if p.is_file() or p.is_symlink():
                p.unlink()
    tmp.rename(dest)
    print(f"{PROG}: debootstrap took {time.perf_counter() - t0:.0f} s", file=sys.stderr)


def _top_level_sizes(rootfs: Path) -> dict[str, int]:
    sizes = {}
    for entry in sorted(os.listdir(rootfs)):
        path = rootfs / entry
        sizes[entry] = tree_bytes(path) if path.is_dir() and not path.is_symlink() else 1
    return sizes


def split_layers(rootfs: Path, n: int) -> list[list[str]]:
    """Top-level entries in ``n`` groups balanced by size (largest first into the lightest group)."""
    sizes = _top_level_sizes(rootfs)
    n = max(1, min(n, len(sizes)))
    groups: list[list[str]] = [[] for _ in range(n)]
    weights = [0] * n
    for name, size in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0])):
        i = weights.index(min(weights))
        groups[i].append(name)
        weights[i] += size
    return [sorted(g) for g in groups if g]


class _HashingWriter:
    """A write-only file object that hashes and counts what goes through it."""

    def __init__(self, target) -> None:
        self.target = target
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.target.write(data)

    def flush(self) -> None:
        self.target.flush()


EMPTY_DIRS = ("dev", "proc", "sys")  # kept as directories, their contents left out (as in Docker images)


def _write_layer(rootfs: Path, names: list[str], blobs: Path, counts: dict[str, int]) -> tuple[dict, str]:
    tmp = blobs / f".layer-{os.getpid()}.tmp"
    with open(tmp, "wb") as raw:
        compressed = _HashingWriter(raw)
        with gzip.GzipFile(fileobj=compressed, mode="wb", compresslevel=6, mtime=0) as gz:
            plain = _HashingWriter(gz)
            with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for top in names:
                    for path, arcname in _walk(rootfs, top):
                        info = tar.gettarinfo(str(path), arcname)
                        if info is None:  # socket
                            continue
                        info.uname = info.gname = ""
                        counts["entries"] += 1
                        if info.isreg():
                            counts["bytes"] += info.size
                            with open(path, "rb") as f:
                                tar.addfile(info, f)
                        else:
                            tar.addfile(info)
    digest = "sha256:" + compressed.sha.hexdigest()
    tmp.rename(blobs / compressed.sha.hexdigest())
    return {"mediaType": OCI_LAYER_GZIP, "digest": digest, "size": compressed.size}, \
        "sha256:" + plain.sha.hexdigest()


def _walk(rootfs: Path, top: str):
    path = rootfs / top
    yield path, top
    if path.is_symlink() or not path.is_dir() or top in EMPTY_DIRS:
        return
    for root, dirs, files in os.walk(path):
        dirs.sort()
        rel = os.path.relpath(root, rootfs)
        for name in sorted(dirs + files):
            yield Path(root) / name, f"{rel}/{name}"


def _write_blob(blobs: Path, data: bytes) -> dict:
    hexdigest = hashlib.sha256(data).hexdigest()
    (blobs / hexdigest).write_bytes(data)
    return {"digest": f"sha256:{hexdigest}", "size": len(data)}


def oci_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "ppc64le", "s390x": "s390x"}.get(machine, machine)


def make_layout(rootfs: Path, layout: Path, n_layers: int) -> dict:
    """Pack ``rootfs`` as an OCI image layout tagged TAG; returns the image's figures."""
    tmp = layout.with_name(layout.name + ".tmp")
    remove_tree(tmp)
    blobs = tmp / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    groups = split_layers(rootfs, n_layers)
    print(f"{PROG}: packing {rootfs} as {len(groups)} tar+gzip layer(s) in {layout}", file=sys.stderr)
    t0 = time.perf_counter()
    counts = {"entries": 0, "bytes": 0}
    layers, diff_ids = [], []
    for group in groups:
        desc, diff_id = _write_layer(rootfs, group, blobs, counts)
        layers.append({**desc, "annotations": {"bench.yurt.top-level": ",".join(group)}})
        diff_ids.append(diff_id)
    config = json.dumps({
        "architecture": oci_arch(), "os": "linux",
        "config": {"Env": [f"PATH={SYS_PATH}"], "Cmd": ["bash"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"bench/pull: debootstrap --variant=minbase {SUITE} ({','.join(g)})"}
                    for g in groups],
    }, sort_keys=True).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, **_write_blob(blobs, config)},
                           "layers": layers}, sort_keys=True).encode()
    mdesc = {"mediaType": OCI_MANIFEST, **_write_blob(blobs, manifest),
             "annotations": {"org.opencontainers.image.ref.name": TAG}}
    (tmp / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (tmp / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [mdesc]}))
    info = {
        "rootfs": str(rootfs),
        "layers": len(groups),
        "layer_groups": groups,
        "compressed_bytes": sum(d["size"] for d in layers),
        "layer_bytes": [d["size"] for d in layers],
        "unpacked_bytes": counts["bytes"],
        "entries": counts["entries"],
        "manifest_digest": mdesc["digest"],
        "pack_s": round(time.perf_counter() - t0, 2),
    }
    (tmp / "bench-image.json").write_text(json.dumps(info, indent=1))
    remove_tree(layout)
    tmp.rename(layout)
    return info


# ---------------------------------------------------------------------- registries


class Registry:
    """A ``docker-registry`` on 127.0.0.1:<free port>, plain HTTP or TLS, no auth (peer-baselines #19)."""

    def __init__(self, base: Path, storage: Path, tls: tuple[Path, Path] | None = None) -> None:
        self.base, self.storage, self.tls = base, storage, tls
        self.process: subprocess.Popen | None = None
        self.host = ""
        self.log = base / "registry.log"

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def start(self) -> None:
        exe = which(REGISTRY_BIN)
        if not exe:
            raise Skip("docker-registry not installed (apt-get install docker-registry)")
        self.base.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(parents=True, exist_ok=True)
        for _attempt in range(3):  # a free port can be taken between probing and binding
            port = free_port()
            config = ["version: 0.1", "log:", "  level: warn", "  accesslog:", "    disabled: true",
                      "storage:", "  filesystem:", f"    rootdirectory: {self.storage}",
                      "http:", f"  addr: 127.0.0.1:{port}", "  secret: yurt-bench-secret"]
            if self.tls:
                config += ["  tls:", f"    certificate: {self.tls[0]}", f"    key: {self.tls[1]}"]
            (self.base / "config.yml").write_text("\n".join(config) + "\n")
            self.host = f"127.0.0.1:{port}"
            with open(self.log, "wb") as log:
                self.process = subprocess.Popen([exe, "serve", str(self.base / "config.yml")],
                                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True)
            try:
                self._wait_ready()
                return
            except Fail:
                self.stop()
                if "address already in use" not in self.log.read_text(errors="replace"):
                    raise
        raise Fail("docker-registry: no free port")

    def _wait_ready(self, timeout: float = 30) -> None:
        import ssl

        context = None
        if self.tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise Fail(f"docker-registry exited ({self.process.returncode}): "
                           f"{tail(self.log.read_text(errors='replace'))}")
            try:
                with urllib.request.urlopen(f"{self.scheme}://{self.host}/v2/", timeout=2, context=context):
                    return
            except urllib.error.HTTPError as exc:
                last = str(exc)
            except OSError as exc:
                last = str(exc)
            time.sleep(0.1)
        raise Fail(f"docker-registry at {self.host} not ready after {timeout:.0f} s ({last})")

    def stop(self) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (ch-image is told --tls-no-verify)."""
    openssl = which("openssl")
    if not openssl:
        raise Skip("openssl not installed (needed for the TLS registry)")
    directory.mkdir(parents=True, exist_ok=True)
    crt, key = directory / "server.crt", directory / "server.key"
    proc = subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                           "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "2",
                           "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise Fail(f"openssl: {tail(proc.stderr)}")
    return crt, key


# ---------------------------------------------------------------------- the image, served


def prepare_image(workdir: Path, rootfs_arg: str | None, mirror: str | None, layers: int) -> dict:
    """The OCI layout of the Debian image (``--rootfs DIR`` or the cached debootstrap tree), packed
    once and cached under ``workdir`` by (rootfs, layers); returns its figures plus ``layout``."""
    if rootfs_arg:
        rootfs = Path(rootfs_arg).absolute()
        if not rootfs.is_dir():
            sys.exit(f"{PROG}: --rootfs {rootfs} is not a directory")
    else:
        rootfs = workdir / f"rootfs-{SUITE}-minbase"
        if not rootfs.is_dir():
            make_rootfs(rootfs, mirror)
    key = hashlib.sha256(f"{rootfs}\0{layers}".encode()).hexdigest()[:12]
    layout = workdir / f"oci-{key}"
    info_file = layout / "bench-image.json"
    if info_file.is_file():
        image = json.loads(info_file.read_text())
        print(f"{PROG}: reusing the OCI layout {layout} (delete it to repack)", file=sys.stderr)
    else:
        image = make_layout(rootfs, layout, layers)
    image["layout"] = str(layout)
    return image


class ImageRegistries:
    """The image pushed to a plain-HTTP registry, and optionally the same storage served over TLS."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.registries: list[Registry] = []
        self.http: Registry | None = None
        self.https: Registry | None = None

    def ref(self, tls: bool = False) -> str:
        reg = self.https if tls else self.http
        assert reg is not None
        return f"{reg.host}/{REPOSITORY}:{TAG}"

    def start(self, layout: str, env: dict[str, str], need_tls: bool) -> None:
        """Start the HTTP registry, push ``layout`` with skopeo (exits on failure: nothing can run
        without it), then the TLS one when asked (a failure there only loses the ch-image rows)."""
        storage = self.scratch / "registry-storage"
        self.http = Registry(self.scratch / "registry-http", storage)
        self.registries.append(self.http)
        self.http.start()
        skopeo = which("skopeo")
        if not skopeo:
            sys.exit(f"{PROG}: skopeo is needed to push the image (apt-get install skopeo)")
        auth = self.scratch / "skopeo-auth.json"
        auth.write_text('{"auths": {}}')
        t0 = time.perf_counter()
        result = run_timed([skopeo, "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false",
                            f"oci:{layout}:{TAG}", f"docker://{self.ref()}"],
                           {**env, "REGISTRY_AUTH_FILE": str(auth)}, self.scratch, timeout=600)
        if result.rc != 0:
            sys.exit(f"{PROG}: pushing the image failed: {tail(result.text)}")
        print(f"{PROG}: pushed to {self.http.scheme}://{self.ref()} in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)
        if need_tls:
            try:
                tls = make_cert(self.scratch / "tls")
                self.https = Registry(self.scratch / "registry-https", storage, tls=tls)
                self.registries.append(self.https)
                self.https.start()
                print(f"{PROG}: same storage over TLS (self-signed) at https://{self.ref(tls=True)}",
                      file=sys.stderr)
            except (Skip, Fail) as exc:
                self.https = None
                print(f"{PROG}: no TLS registry: {exc}", file=sys.stderr)

    def stop(self) -> None:
        for reg in self.registries:
            reg.stop()


# ---------------------------------------------------------------------- the yurt command, versions, host


def install_yurt(yurt_arg: str | None, python_arg: str | None, venv: Path) -> tuple[list[str], str | None]:
    """``--yurt CMD``, else a regular (not editable) install of this tree into the fresh venv ``venv``,
    as bench/startup does: `python -m yurt` or an editable install adds costs no installed yurt has.
    Returns the command and the interpreter that runs it (None when it is not a Python script)."""
    if yurt_arg:
        argv = shlex.split(yurt_arg)
        exe = shutil.which(argv[0]) or argv[0]
        argv[0] = exe
        python = shebang_python(exe)
        if python and is_editable(python):
            raise Fail(f"--yurt {yurt_arg} runs an editable install of yurt: it would time import hooks and a "
                       "source tree no user has; give a regular install, or leave --yurt out")
        return argv, python
    python = python_arg or "/usr/bin/python3"
    print(f"{PROG}: installing yurt from {REPO} into {venv}", file=sys.stderr)
    subprocess.run([python, "-m", "venv", str(venv)], check=True, capture_output=True)
    proc = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                           str(REPO)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise Fail(f"pip install of yurt into {venv} failed: {tail(proc.stderr, 2)}")
    return [str(venv / "bin" / "yurt")], str(venv / "bin" / "python")


def is_editable(python: str) -> bool:
    """Whether ``python`` imports yurt from an editable install (pip's ``direct_url.json`` says so)."""
    code = ("import importlib.metadata as m, json; "
            "print(json.loads(m.distribution('yurt').read_text('direct_url.json') or '{}')"
            ".get('dir_info', {}).get('editable', False))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd="/", env=env, check=False)
    return proc.stdout.strip() == "True"


def shebang_python(exe: str) -> str | None:
    try:
        with open(exe, "rb") as f:
            first = f.readline(512).decode(errors="replace")
    except OSError:
        return None
    if first.startswith("#!") and "python" in first:
        parts = first[2:].split()
        if parts and parts[0].endswith("/env") and len(parts) > 1:
            return shutil.which(parts[1])
        return parts[0] if parts else None
    return None


def pip_version(script: str, dist: str) -> str:
    python = shebang_python(script)
    if not python:
        return "?"
    proc = subprocess.run([python, "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
                          capture_output=True, text=True, check=False)
    return proc.stdout.strip() or "?"


def tool_version(argv: list[str], env: dict[str, str]) -> str | None:
    """The first version-looking word of ``argv``'s first output line (None if it cannot run)."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (proc.stdout or proc.stderr).strip().splitlines()
    if not text:
        return None
    found = re.search(r"\b\d+\.\d+[\w.+~-]*", text[0])
    return found.group(0) if found else text[0].strip()


def host_info() -> dict[str, object]:
    info: dict[str, object] = {"node": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count()}
    try:
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["mem_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    except OSError:
        pass
    return info


def on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def install_signal_handlers() -> None:
    """Ctrl-C, SIGTERM and SIGHUP all unwind through ``finally`` (registries stopped, scratch removed)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
