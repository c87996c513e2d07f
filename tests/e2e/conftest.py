"""Fixtures for end-to-end tests against real registries, started by the tests themselves.

``registry_http`` (session)
    A Debian ``docker-registry`` (CNCF distribution 2.8) on ``127.0.0.1:<free port>``,
    plain HTTP, no auth, storage in a temp dir.  Yields a :class:`RunningRegistry`.
``registry_tls_auth`` (session)
    The same over TLS, with a throw-away CA and a server certificate for
    ``127.0.0.1``/``localhost`` made with ``openssl``, and htpasswd (bcrypt) auth.
    ``.ca_file``, ``.username``, ``.password`` say how to reach it.
``registry_token`` (session)
    Plain HTTP with Docker token auth: a :class:`TokenServer` in this process
    issues JWTs (RS256, signed with ``openssl``, ``x5c`` header) that the
    registry verifies; ``.token_server.requests`` records what was asked.
``make_oci_image``
    ``make(layout_dir, tag, files, arch="amd64", os_name="linux") -> ImageInfo``: writes a
    one-layer OCI image layout by hand (tar+gzip layer, config, manifest, ``index.json``).
    ``make_oci_index(layout_dir, tag, {arch: files})`` is ``make_oci_image.index``.
``umoci_image``
    ``build(layout_dir, tag, rootfs_dir) -> Path``: an OCI layout built by ``umoci``.
``skopeo_push``
    ``push(src_layout, tag, dest, *, registry=None, format=None, all_images=False)``
    copies ``oci:SRC:TAG`` to ``docker://DEST`` with ``skopeo`` (credentials and CA
    taken from ``registry`` when it is given).

Everything is skipped, with the reason, when ``docker-registry``, ``openssl``,
``htpasswd``, ``skopeo`` or ``umoci`` is missing (``scripts/install-system-deps``).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import ssl
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REGISTRY_BIN = "/usr/bin/docker-registry"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def _need(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None and not os.path.exists(p)]
    if missing:
        pytest.skip("needs " + ", ".join(missing) + " (scripts/install-system-deps)")


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                          stdin=subprocess.DEVNULL, **kwargs)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningRegistry:
    """A ``docker-registry`` process started by the tests."""

    def __init__(self, host: str, scheme: str, root: Path, log: Path, ca_file: Path | None = None,
                 username: str | None = None, password: str | None = None, cert_dir: Path | None = None) -> None:
        self.host = host
        self.scheme = scheme
        self.url = f"{scheme}://{host}"
        self.root = root
        self.log = log
        self.ca_file = ca_file
        self.cert_dir = cert_dir  # a directory with ca.crt, for skopeo's --*-cert-dir
        self.username = username
        self.password = password
        self.process: subprocess.Popen | None = None
        self.token_server: TokenServer | None = None

    @property
    def credentials(self) -> tuple[str, str] | None:
        return (self.username, self.password) if self.username and self.password is not None else None

    def __repr__(self) -> str:
        return f"RunningRegistry({self.url})"


def _wait_ready(reg: RunningRegistry, context: ssl.SSLContext | None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        assert reg.process is not None
        if reg.process.poll() is not None:
            raise RuntimeError(f"docker-registry exited with {reg.process.returncode}:\n{reg.log.read_text()}")
        try:
            with urllib.request.urlopen(f"{reg.url}/v2/", timeout=2, context=context):
                return
        except urllib.error.HTTPError as e:
            if e.code == 401:  # up, and asking for credentials
                return
            last = str(e)
        except (OSError, urllib.error.URLError) as e:
            last = str(e)
        time.sleep(0.1)
    raise RuntimeError(f"docker-registry at {reg.url} not ready after {timeout} s ({last}):\n{reg.log.read_text()}")


def _start_registry(base: Path, *, tls: tuple[Path, Path] | None = None, htpasswd: Path | None = None,
                    token_auth: dict[str, str] | None = None, ca_file: Path | None = None,
                    **info) -> RunningRegistry:
    storage = base / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    for _attempt in range(3):  # a free port can be taken between probing and binding
        port = _free_port()
        config = [
            "version: 0.1",
            "log:",
            "  level: warn",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {storage}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: 127.0.0.1:{port}",
            "  secret: yurt-e2e-tests-secret",
        ]
        if tls:
            config += ["  tls:", f"    certificate: {tls[0]}", f"    key: {tls[1]}"]
        if htpasswd:
            config += ["auth:", "  htpasswd:", "    realm: yurt-e2e", f"    path: {htpasswd}"]
        if token_auth:
            config += ["auth:", "  token:", *(f"    {k}: {v}" for k, v in token_auth.items())]
        config_file = base / "config.yml"
        config_file.write_text("\n".join(config) + "\n")
        log = base / "registry.log"
        reg = RunningRegistry(f"127.0.0.1:{port}", "https" if tls else "http", storage, log, ca_file=ca_file, **info)
        with open(log, "wb") as log_file:
            reg.process = subprocess.Popen([REGISTRY_BIN, "serve", str(config_file)], stdin=subprocess.DEVNULL,
                                           stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
        try:
            _wait_ready(reg, context)
            return reg
        except RuntimeError:
            _stop_registry(reg)
            if "address already in use" not in log.read_text():
                raise
    raise RuntimeError("could not find a free port for docker-registry")


def _stop_registry(reg: RunningRegistry) -> None:
    from slurm import stop_process

    stop_process(reg.process)


@pytest.fixture(scope="session")
def registry_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    _need(REGISTRY_BIN)
    reg = _start_registry(tmp_path_factory.mktemp("registry-http"))
    try:
        yield reg
    finally:
        _stop_registry(reg)


def make_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost: ``(ca.crt, server.crt, server.key)``."""
    _need("openssl")
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _run(["openssl", "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca_crt), "-days", "2",
          "-subj", "/CN=yurt e2e test CA", "-addext", "basicConstraints=critical,CA:TRUE",
          "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    _run(["openssl", "req", "-new", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1"])
    ext = directory / "server.ext"
    ext.write_text("basicConstraints=CA:FALSE\n"
                   "keyUsage=critical,digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=serverAuth\n"
                   "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                   "subjectKeyIdentifier=hash\n"
                   "authorityKeyIdentifier=keyid,issuer\n")
    _run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
          "-CAcreateserial", "-out", str(crt), "-days", "2", "-extfile", str(ext)])
    return ca_crt, crt, key


@pytest.fixture(scope="session")
def registry_tls_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    _need(REGISTRY_BIN, "openssl", "htpasswd")
    base = tmp_path_factory.mktemp("registry-tls")
    ca_crt, crt, key = make_tls_files(base)
    cert_dir = base / "certs.d"
    cert_dir.mkdir()
    shutil.copy(ca_crt, cert_dir / "ca.crt")
    username, password = "yurtuser", "s3cret:with-colon"
    htpasswd = base / "htpasswd"
    htpasswd.write_text(_run(["htpasswd", "-Bbn", username, password]).stdout)
    reg = _start_registry(base, tls=(crt, key), htpasswd=htpasswd, ca_file=ca_crt, username=username,
                          password=password, cert_dir=cert_dir)
    try:
        yield reg
    finally:
        _stop_registry(reg)


class TokenServer:
    """A Docker-token-protocol auth server (``GET /token?service=&scope=``) signing RS256 JWTs with openssl.

    Anonymous clients get ``pull`` on ``public/*`` only; clients with the right
    Basic credentials get every action they ask for; wrong credentials get 401.
    ``requests`` records ``(user or None, [scope, ...])`` of every token request.
    """

    service = "yurt-e2e-registry"
    issuer = "yurt-e2e-token-issuer"

    def __init__(self, directory: Path, username: str, password: str) -> None:
        self.key = directory / "token.key"
        self.cert = directory / "token.crt"
        _run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key),
              "-out", str(self.cert), "-days", "2", "-subj", "/CN=yurt e2e token issuer"])
        self.x5c = base64.b64encode(ssl.PEM_cert_to_DER_cert(self.cert.read_text())).decode()
        self.username, self.password = username, password
        self.requests: list[tuple[str | None, list[str]]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.realm = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def sign(self, claims: dict) -> str:
        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        header = {"alg": "RS256", "typ": "JWT", "x5c": [self.x5c]}
        signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)], input=signing_input.encode(),
                                   capture_output=True, check=True, timeout=30).stdout
        return signing_input + "." + b64(signature)

    def grant(self, user: str | None, scopes: list[str]) -> list[dict]:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            wanted = [a for a in actions.split(",") if a]
            allowed = wanted if user else [a for a in wanted if a == "pull" and name.startswith("public/")]
            if kind == "repository" and allowed:
                access.append({"type": "repository", "name": name, "actions": allowed})
        return access

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format, *args):  # noqa: A002
                pass

            def do_GET(self):  # noqa: N802
                query = urllib.parse.urlparse(self.path)
                params = urllib.parse.parse_qs(query.query)
                user = None
                header = self.headers.get("Authorization", "")
                if header.startswith("Basic "):
                    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                    if (user, password) != (server.username, server.password):
                        return self._answer(401, {"details": "wrong user name or password"})
                scopes = params.get("scope", [])
                server.requests.append((user, scopes))
                now = int(time.time())
                claims = {"iss": server.issuer, "sub": user or "", "aud": params.get("service", [""])[0],
                          "exp": now + 300, "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(),
                          "access": server.grant(user, scopes)}
                token = server.sign(claims)
                self._answer(200, {"token": token, "access_token": token, "expires_in": 300})

            def _answer(self, status: int, doc: dict) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


@pytest.fixture(scope="session")
def registry_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """A plain-HTTP docker-registry with Docker token auth; ``.token_server`` is the :class:`TokenServer`."""
    _need(REGISTRY_BIN, "openssl")
    base = tmp_path_factory.mktemp("registry-token")
    tokens = TokenServer(base, "tokenuser", "tokenpass")
    token_auth = {"realm": tokens.realm, "service": tokens.service, "issuer": tokens.issuer,
                  "rootcertbundle": str(tokens.cert)}
    try:
        reg = _start_registry(base, token_auth=token_auth, username=tokens.username, password=tokens.password)
    except BaseException:
        tokens.close()
        raise
    reg.token_server = tokens
    try:
        yield reg
    finally:
        _stop_registry(reg)
        tokens.close()


# --------------------------------------------------------------------------- images


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class ImageInfo:
    """What :func:`make_oci_image` wrote: digests and bytes of the manifest, config and layer."""

    def __init__(self, layout: Path, tag: str, manifest: bytes, config: bytes, layer: bytes, diff_id: str,
                 media_type: str = OCI_MANIFEST) -> None:
        self.layout = layout
        self.tag = tag
        self.manifest = manifest
        self.manifest_digest = _sha256(manifest)
        self.media_type = media_type
        self.config = config
        self.config_digest = _sha256(config)
        self.layer = layer
        self.layer_digest = _sha256(layer)
        self.diff_id = diff_id

    def blob_path(self, digest: str) -> Path:
        return self.layout / "blobs" / "sha256" / digest.split(":", 1)[1]


def _write_blob(layout: Path, data: bytes) -> dict:
    digest = _sha256(data)
    path = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": digest, "size": len(data)}


def _tar_layer(files: dict[str, bytes | str]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for name in sorted(files):
            parts = name.strip("/").split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                    tar.addfile(info)
            content = files[name]
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo("/".join(parts))
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def _write_index(layout: Path, entries: list[dict]) -> None:
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index_file = layout / "index.json"
    index = json.loads(index_file.read_text()) if index_file.exists() else {"schemaVersion": 2, "manifests": []}
    names = {e["annotations"]["org.opencontainers.image.ref.name"] for e in entries}
    index["manifests"] = [m for m in index["manifests"]
                          if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") not in names]
    index["manifests"] += entries
    index_file.write_text(json.dumps(index))


def _image(layout: Path, files: dict[str, bytes | str], arch: str, os_name: str) -> tuple[dict, ImageInfo]:
    tar = _tar_layer(files)
    layer = gzip.compress(tar, mtime=0)
    config = json.dumps({"architecture": arch, "os": os_name,
                         "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": [_sha256(tar)]}}, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, **_write_blob(layout, config)},
        "layers": [{"mediaType": OCI_LAYER_GZIP, **_write_blob(layout, layer)}],
    }, sort_keys=True).encode()
    desc = {"mediaType": OCI_MANIFEST, **_write_blob(layout, manifest),
            "platform": {"architecture": arch, "os": os_name}}
    return desc, ImageInfo(layout, "", manifest, config, layer, _sha256(tar))


def make_oci_image(layout: Path, tag: str, files: dict[str, bytes | str], arch: str = "amd64",
                   os_name: str = "linux") -> ImageInfo:
    """Write (or add to) an OCI image layout at ``layout`` with a one-layer image tagged ``tag``."""
    layout.mkdir(parents=True, exist_ok=True)
    desc, info = _image(layout, files, arch, os_name)
    info.tag = tag
    _write_index(layout, [{**desc, "annotations": {"org.opencontainers.image.ref.name": tag}}])
    return info


def make_oci_index(layout: Path, tag: str, per_arch: dict[str, dict[str, bytes | str]]
                   ) -> tuple[bytes, dict[str, ImageInfo]]:
    """An image index tagged ``tag`` with one image per architecture: ``(index bytes, {arch: ImageInfo})``."""
    layout.mkdir(parents=True, exist_ok=True)
    images: dict[str, ImageInfo] = {}
    descriptors = []
    for arch, files in per_arch.items():
        desc, info = _image(layout, files, arch, "linux")
        if arch == "arm64":
            desc["platform"]["variant"] = "v8"
        info.tag = tag
        images[arch] = info
        descriptors.append(desc)
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}).encode()
    _write_index(layout, [{"mediaType": OCI_INDEX, **_write_blob(layout, index),
                           "annotations": {"org.opencontainers.image.ref.name": tag}}])
    return index, images


class _ImageMaker:
    def __call__(self, layout: Path, tag: str, files: dict[str, bytes | str], arch: str = "amd64",
                 os_name: str = "linux") -> ImageInfo:
        return make_oci_image(layout, tag, files, arch, os_name)

    index = staticmethod(make_oci_index)


@pytest.fixture(name="make_oci_image", scope="session")
def _make_oci_image() -> _ImageMaker:
    return _ImageMaker()


@pytest.fixture(scope="session")
def umoci_image() -> Callable[[Path, str, Path], Path]:
    """``build(layout, tag, rootfs_dir)``: an OCI layout made by umoci (init, new, insert, config)."""
    _need("umoci")
    rootless = [] if os.geteuid() == 0 else ["--rootless"]

    def build(layout: Path, tag: str, rootfs: Path) -> Path:
        _run(["umoci", "init", "--layout", str(layout)])
        image = f"{layout}:{tag}"
        _run(["umoci", "new", "--image", image])
        _run(["umoci", "insert", *rootless, "--image", image, str(rootfs), "/"])
        _run(["umoci", "config", "--image", image, "--config.cmd", "/bin/sh",
              "--config.env", "YURT_UMOCI=1"])
        return layout

    return build


def _skopeo_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["REGISTRY_AUTH_FILE"] = str(tmp / "skopeo-auth.json")  # never the user's credentials
    return env


@pytest.fixture(scope="session")
def skopeo_push(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., None]:
    """``push(src_layout, tag, dest, *, registry=None, format=None, all_images=False)``."""
    _need("skopeo")
    tmp_path = tmp_path_factory.mktemp("skopeo")

    def push(src: Path, tag: str, dest: str, *, registry: RunningRegistry | None = None,
             format: str | None = None, all_images: bool = False) -> None:
        argv = ["skopeo", "--insecure-policy", "copy", "--quiet"]
        if registry is not None and registry.cert_dir is not None:
            argv += ["--dest-cert-dir", str(registry.cert_dir)]
        else:
            argv += ["--dest-tls-verify=false"]
        if registry is not None and registry.credentials:
            argv += ["--dest-creds", f"{registry.username}:{registry.password}"]
        if format:
            argv += ["--format", format]
        if all_images:
            argv += ["--all"]
        _run([*argv, f"oci:{src}:{tag}", f"docker://{dest}"], env=_skopeo_env(tmp_path))

    return push


@pytest.fixture(scope="session")
def skopeo_inspect(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., dict]:
    """``inspect(ref, *, registry=None, raw=False) -> dict``: ``skopeo inspect docker://REF``."""
    _need("skopeo")
    tmp_path = tmp_path_factory.mktemp("skopeo")

    def inspect(ref: str, *, registry: RunningRegistry | None = None, raw: bool = False) -> dict:
        argv = ["skopeo", "--insecure-policy", "inspect"]
        if raw:
            argv.append("--raw")
        if registry is not None and registry.cert_dir is not None:
            argv += ["--cert-dir", str(registry.cert_dir)]
        else:
            argv += ["--tls-verify=false"]
        if registry is not None and registry.credentials:
            argv += ["--creds", f"{registry.username}:{registry.password}"]
        return json.loads(_run([*argv, f"docker://{ref}"], env=_skopeo_env(tmp_path)).stdout)

    return inspect


@pytest.fixture(scope="session")
def debian_mirror() -> str:
    """The Debian mirror the tests debootstrap bookworm from: ``$YURT_TEST_DEBIAN_MIRROR``, else the
    one this machine's apt uses (``/etc/apt/sources.list*``); no mirror host is built in (sites and CI
    machines have their own)."""
    mirror = os.environ.get("YURT_TEST_DEBIAN_MIRROR", "").strip()
    if mirror:
        return mirror
    from yurt.builder.aptsources import debian_mirror as from_apt

    found = from_apt("bookworm")
    if found is None:
        pytest.skip("no Debian mirror: set YURT_TEST_DEBIAN_MIRROR (apt's sources name none for bookworm)")
    return found.uri


@pytest.fixture(scope="session")
def debian_rootfs(request) -> Path:
    """A Debian bookworm minbase tree by debootstrap (root only), cached across runs on one machine
    under ``/var/tmp/yurt-ci/debian-bookworm`` (``$YURT_TEST_DEBIAN_ROOTFS``).  It holds device
    nodes: copy it with ``cp -a``, never ``shutil.copytree`` (which would read /dev/full forever)."""
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is not installed")
    final = Path(os.environ.get("YURT_TEST_DEBIAN_ROOTFS", "/var/tmp/yurt-ci/debian-bookworm"))
    if not (final / "etc" / "os-release").exists():
        mirror = request.getfixturevalue("debian_mirror")  # only when the tree must be made
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="debian-", dir=final.parent))
        r = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(tmp), mirror],
                           capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            pytest.fail(f"debootstrap from {mirror} failed: {r.stderr.strip().splitlines()[-1:]}")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    return final


@pytest.fixture(scope="session")
def slurm() -> Iterator:
    """A single-node Slurm on localhost (munged, slurmctld, slurmd as root; see tests/e2e/slurm.py),
    stopped and removed afterwards.  ``.run_as(user, argv, env=, timeout=)`` runs srun/sbatch."""
    from slurm import LocalSlurm, missing_programs

    if os.geteuid() != 0:
        pytest.skip("starting Slurm daemons needs root")
    missing = missing_programs()
    if missing:
        pytest.skip("needs " + ", ".join(missing) + " (slurm-wlm, munge: scripts/install-system-deps)")
    with LocalSlurm() as cluster:
        yield cluster


# --------------------------------------------------------------------------- workflow clients


class ClientWorld:
    """What the workflow-client tests share (see clients.py): the clients' venv, a directory with the
    ``apptainer``/``singularity`` links, the registry, and the image with bash as a registry
    reference (``ref``, without ``docker://``), a local SIF (``sif``) and its tree (``rootfs``)."""

    def __init__(self, venv: Path, bin_dir: Path, registry: RunningRegistry, ref: str, sif: Path,
                 rootfs: Path) -> None:
        self.venv, self.bin_dir, self.registry = venv, bin_dir, registry
        self.ref, self.sif, self.rootfs = ref, sif, rootfs

    def env(self, home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
        from clients import client_env

        return client_env(self.bin_dir, self.venv, home, self.registry.host, extra)


@pytest.fixture(scope="session")
def client_world(registry_http, busybox_rootfs, tmp_path_factory) -> ClientWorld:
    """Session-wide: the bash image pushed to ``registry_http`` as ``HOST/clients/bash:1`` with yurt push,
    built into ``bash.sif`` with yurt build (both as the apptainer link runs them, so setup itself uses
    yurt's Apptainer names)."""
    from clients import add_host_bash, clients_venv, make_apptainer_bin, ok
    from installed_yurt import make_run_yurt

    venv = clients_venv()
    base = tmp_path_factory.mktemp("clients")
    bin_dir = make_apptainer_bin(base / "bin")
    rootfs = base / "bash-rootfs"
    shutil.copytree(busybox_rootfs, rootfs, symlinks=True)
    add_host_bash(rootfs)
    (rootfs / "etc" / "clients-image").write_text("yurt-clients-image\n")  # proof a job ran in the image
    (rootfs / "srv" / "rw").mkdir()  # writable by anyone, where --writable-tmpfs lets a job write
    (rootfs / "srv" / "rw").chmod(0o1777)
    # The runscript Apptainer writes for a docker image without ENTRYPOINT or CMD: run the arguments
    # (cwltool runs its tools with `singularity run`), not the busybox tree's greeting.
    runscript = rootfs / ".singularity.d" / "runscript"
    runscript.unlink()
    runscript.write_text('#!/bin/sh\nif [ $# -gt 0 ]; then exec "$@"; fi\nexec /bin/sh\n')
    runscript.chmod(0o755)
    ref = f"{registry_http.host}/clients/bash:1"
    yurt = make_run_yurt(default_cwd=base)
    env = {"YURT_CACHEDIR": str(base / "setup-cache")}
    ok(yurt("push", "--insecure", rootfs, f"docker://{ref}", env=env, timeout=180))
    sif = base / "bash.sif"
    ok(yurt("build", sif, rootfs, env=env, timeout=300))
    return ClientWorld(venv, bin_dir, registry_http, ref, sif, rootfs)
