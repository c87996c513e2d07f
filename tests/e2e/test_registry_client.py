"""RegistryClient against real ``docker-registry`` processes (see conftest.py), skopeo and umoci.

* pull side: manifests (OCI, Docker schema 2, index) and blobs, verified;
* push side: chunked uploads, cross-repository mounts, manifests that skopeo then reads;
* TLS + htpasswd auth: anonymous, wrong and right credentials, custom CA, ``insecure``;
* faults, through a small HTTP proxy in this file: a connection dropped mid-blob
  (resumed with Range, or restarted when the server ignores Range), 500s
  (retried), a corrupted blob (refused, nothing left behind).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import os
import socket
import stat
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("httpx")

from yurt.errors import ImageError  # noqa: E402
from yurt.registry.client import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, RegistryClient  # noqa: E402
from yurt.registry.errors import RegistryError  # noqa: E402
from yurt.registry.platforms import resolve_platform  # noqa: E402

pytestmark = [pytest.mark.e2e]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def client_for(reg, **kwargs) -> RegistryClient:
    kwargs.setdefault("backoff", 0.01)
    if reg.scheme == "http":
        kwargs.setdefault("insecure", True)
    return RegistryClient(reg.host, **kwargs)


@pytest.fixture(scope="module")
def pushed(registry_http, make_oci_image, skopeo_push, tmp_path_factory):
    """A one-layer OCI image at REGISTRY/e2e/oci:v1 (pushed by skopeo)."""
    layout = tmp_path_factory.mktemp("layout") / "oci"
    info = make_oci_image(layout, "v1", {"etc/hello": "hello from yurt\n", "bin/data": os.urandom(4096)})
    skopeo_push(layout, "v1", f"{registry_http.host}/e2e/oci:v1")
    return info


@pytest.fixture(scope="module")
def big_blob(registry_http, tmp_path_factory):
    """A 3 MiB random blob uploaded to REGISTRY/e2e/big by the client itself: (digest, bytes)."""
    data = os.urandom(3 * 1024 * 1024 + 123)
    digest = sha256(data)
    path = tmp_path_factory.mktemp("big") / "blob"
    path.write_bytes(data)
    with client_for(registry_http) as client:
        client.chunk_size = 1 << 20
        assert client.upload_blob("e2e/big", digest, path, len(data)) == "uploaded"
    return digest, data


# --------------------------------------------------------------------------- pull


def test_get_manifest_oci(registry_http, pushed):
    with client_for(registry_http) as client:
        body, media_type, digest = client.get_manifest("e2e/oci", "v1")
        assert media_type == OCI_MANIFEST
        assert digest == sha256(body)
        assert digest == pushed.manifest_digest and body == pushed.manifest
        again = client.get_manifest("e2e/oci", digest)
        assert again == (body, media_type, digest)


def test_get_manifest_docker_schema2(registry_http, make_oci_image, skopeo_push, tmp_path):
    info = make_oci_image(tmp_path / "layout", "v2s2", {"etc/motd": "schema 2\n"})
    skopeo_push(info.layout, "v2s2", f"{registry_http.host}/e2e/docker:v1", format="v2s2")
    with client_for(registry_http) as client:
        body, media_type, digest = client.get_manifest("e2e/docker", "v1")
        assert media_type == DOCKER_MANIFEST
        assert digest == sha256(body)
        doc = json.loads(body)
        assert doc["schemaVersion"] == 2 and doc["mediaType"] == DOCKER_MANIFEST
        assert [layer["digest"] for layer in doc["layers"]] == [info.layer_digest]
        assert client.get_manifest("e2e/docker", digest, accept=[DOCKER_MANIFEST])[2] == digest


def test_accept_header_matters(registry_http, pushed):
    """docker-registry serves an OCI manifest only to a client that accepts OCI."""
    with client_for(registry_http) as client:
        with pytest.raises(RegistryError) as info:
            client.get_manifest("e2e/oci", "v1", accept=DOCKER_MANIFEST)
    assert "MANIFEST_UNKNOWN" in info.value.codes
    assert str(info.value).startswith(f"registry {registry_http.host}: MANIFEST_UNKNOWN: ")


def test_unknown_manifest_is_one_line(registry_http, pushed):
    with client_for(registry_http) as client:
        with pytest.raises(RegistryError) as info:
            client.get_manifest("e2e/oci", "nope")
        message = str(info.value)
        assert message.startswith(f"registry {registry_http.host}: MANIFEST_UNKNOWN: manifest unknown")
        assert "\n" not in message and info.value.status == 404
        with pytest.raises(RegistryError, match="NAME_UNKNOWN"):
            client.list_tags("e2e/does-not-exist")


def test_fetch_blob_verified(registry_http, pushed, tmp_path):
    seen = []
    with client_for(registry_http) as client:
        dest = client.fetch_blob("e2e/oci", pushed.layer_digest, len(pushed.layer), tmp_path / "layer",
                                 lambda done, total: seen.append((done, total)))
        assert dest == tmp_path / "layer" and dest.read_bytes() == pushed.layer
        umask = os.umask(0)
        os.umask(umask)
        assert stat.S_IMODE(dest.stat().st_mode) == 0o666 & ~umask
        assert seen[-1] == (len(pushed.layer), len(pushed.layer))
        config = client.fetch_blob("e2e/oci", pushed.config_digest, len(pushed.config), tmp_path / "config")
        assert json.loads(config.read_bytes())["rootfs"]["diff_ids"] == [pushed.diff_id]
        # a size that is too small is caught before the digest
        with pytest.raises(RegistryError, match=f"digest mismatch for {pushed.layer_digest}"):
            client.fetch_blob("e2e/oci", pushed.layer_digest, len(pushed.layer) - 1, tmp_path / "short")
        with pytest.raises(RegistryError, match="BLOB_UNKNOWN"):
            client.fetch_blob("e2e/oci", sha256(b"nothing"), 7, tmp_path / "missing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config", "layer"]


def test_blob_exists(registry_http, pushed):
    with client_for(registry_http) as client:
        assert client.blob_exists("e2e/oci", pushed.layer_digest)
        assert client.blob_exists("e2e/oci", pushed.config_digest)
        assert not client.blob_exists("e2e/oci", sha256(b"not there"))


def test_index_and_platforms(registry_http, make_oci_image, skopeo_push, tmp_path):
    layout = tmp_path / "multi"
    index, images = make_oci_image.index(layout, "multi", {"amd64": {"arch": "amd64\n"},
                                                           "arm64": {"arch": "arm64\n"}})
    skopeo_push(layout, "multi", f"{registry_http.host}/e2e/multi:v1", all_images=True)
    with client_for(registry_http) as client:
        body, media_type, digest = client.get_manifest("e2e/multi", "v1")
        assert media_type == OCI_INDEX and body == index and digest == sha256(index)
        for arch in ("amd64", "arm64"):
            desc = resolve_platform(body, arch=arch)
            assert desc["digest"] == images[arch].manifest_digest
            manifest, mt, d = client.get_manifest("e2e/multi", desc["digest"])
            assert manifest == images[arch].manifest and mt == OCI_MANIFEST and d == desc["digest"]
        arm64 = resolve_platform(json.loads(body), arch="arm64", variant="v8")
        assert arm64["digest"] == images["arm64"].manifest_digest
        with pytest.raises(ImageError) as info:
            resolve_platform(body, arch="s390x")
        assert "linux/s390x" in str(info.value) and "linux/amd64, linux/arm64/v8" in str(info.value)


def test_umoci_image_interop(registry_http, umoci_image, skopeo_push, tmp_path):
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "os-release").write_text("NAME=umoci-test\n")
    (rootfs / "hello.txt").write_text("hi\n")
    layout = umoci_image(tmp_path / "umoci", "latest", rootfs)
    skopeo_push(layout, "latest", f"{registry_http.host}/e2e/umoci:latest")
    with client_for(registry_http) as client:
        body, media_type, _ = client.get_manifest("e2e/umoci", "latest")
        assert media_type == OCI_MANIFEST
        manifest = json.loads(body)
        cfg = manifest["config"]
        config = json.loads(client.fetch_blob("e2e/umoci", cfg["digest"], cfg["size"], tmp_path / "cfg").read_bytes())
        assert config["config"]["Cmd"] == ["/bin/sh"] and "YURT_UMOCI=1" in config["config"]["Env"]
        names = set()
        for n, layer in enumerate(manifest["layers"]):
            blob = client.fetch_blob("e2e/umoci", layer["digest"], layer["size"], tmp_path / f"layer{n}")
            names |= _tar_names(gzip.decompress(blob.read_bytes()))
        assert {"etc/os-release", "hello.txt"} <= names


def _tar_names(data: bytes) -> set[str]:
    names = set()
    tar = tarfile.open(fileobj=io.BytesIO(data), mode="r|")
    try:
        for member in tar:
            names.add(member.name.lstrip("./"))
    except tarfile.ReadError:  # umoci 0.4.7 leaves out the tar's end-of-archive blocks
        pass
    return names


# --------------------------------------------------------------------------- push


def test_upload_and_put_manifest_seen_by_skopeo(registry_http, make_oci_image, skopeo_inspect, tmp_path):
    # an image made on disk, pushed by the client in 1 MiB chunks (the layer is ~2 MiB)
    info = make_oci_image(tmp_path / "layout", "mine", {"big": os.urandom(2 * 1024 * 1024 + 7), "small": "x"})
    with client_for(registry_http) as client:
        client.chunk_size = 1 << 20
        for digest in (info.config_digest, info.layer_digest):
            assert not client.blob_exists("e2e/pushed", digest)
            path = info.blob_path(digest)
            assert client.upload_blob("e2e/pushed", digest, path, path.stat().st_size) == "uploaded"
            assert client.blob_exists("e2e/pushed", digest)
        digest = client.put_manifest("e2e/pushed", "v1", info.manifest, OCI_MANIFEST)
        assert digest == info.manifest_digest
        assert client.list_tags("e2e/pushed") == ["v1"]
        # by digest too, and a wrong digest is refused before anything is sent
        assert client.put_manifest("e2e/pushed", digest, info.manifest, OCI_MANIFEST) == digest
        with pytest.raises(RegistryError, match="digest mismatch"):
            client.put_manifest("e2e/pushed", sha256(b"other"), info.manifest, OCI_MANIFEST)
    inspected = skopeo_inspect(f"{registry_http.host}/e2e/pushed:v1")
    assert inspected["Digest"] == info.manifest_digest
    assert inspected["Layers"] == [info.layer_digest]
    assert skopeo_inspect(f"{registry_http.host}/e2e/pushed:v1", raw=True) == json.loads(info.manifest)


def test_upload_refuses_wrong_digest(registry_http, tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"some bytes")
    with client_for(registry_http) as client:
        with pytest.raises(RegistryError, match="DIGEST_INVALID"):
            client.upload_blob("e2e/bad", sha256(b"other bytes"), path, path.stat().st_size)
        with pytest.raises(RegistryError, match="has 10 bytes"):
            client.upload_blob("e2e/bad", sha256(b"some bytes"), path, 11)
        # an empty blob is legal
        empty = tmp_path / "empty"
        empty.write_bytes(b"")
        assert client.upload_blob("e2e/bad", sha256(b""), empty, 0) == "uploaded"
        assert client.blob_exists("e2e/bad", sha256(b""))


def test_cross_repository_mount(registry_http, big_blob):
    digest, data = big_blob
    with client_for(registry_http) as client:
        assert not client.blob_exists("e2e/mounted", digest)
        assert client.upload_blob("e2e/mounted", digest, _write_tmp(data), len(data), mount_from="e2e/big") == "mounted"
        assert client.blob_exists("e2e/mounted", digest)


def _write_tmp(data: bytes) -> Path:
    import tempfile

    fd, name = tempfile.mkstemp()
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return Path(name)


# --------------------------------------------------------------------------- TLS and auth


@pytest.fixture(scope="module")
def tls_image(registry_tls_auth, make_oci_image, skopeo_push, tmp_path_factory):
    info = make_oci_image(tmp_path_factory.mktemp("tls") / "layout", "v1", {"etc/secret": "only for yurtuser\n"})
    skopeo_push(info.layout, "v1", f"{registry_tls_auth.host}/private/img:v1", registry=registry_tls_auth)
    return info


def test_tls_auth_anonymous_fails_clearly(registry_tls_auth, tls_image):
    host = registry_tls_auth.host
    with RegistryClient(host, ca_file=registry_tls_auth.ca_file) as client:
        with pytest.raises(RegistryError) as info:
            client.get_manifest("private/img", "v1")
    assert str(info.value) == f"authentication required for {host} (yurt registry login {host})"


def test_tls_auth_wrong_password(registry_tls_auth, tls_image):
    host = registry_tls_auth.host
    with RegistryClient(host, ca_file=registry_tls_auth.ca_file, credentials=("yurtuser", "wrong")) as client:
        with pytest.raises(RegistryError) as info:
            client.get_manifest("private/img", "v1")
        assert str(info.value) == f"authentication failed for {host} (yurt registry login {host})"
        with pytest.raises(RegistryError, match="authentication failed"):
            client.check_login()


def test_tls_auth_with_credentials_and_ca(registry_tls_auth, tls_image, tmp_path):
    reg = registry_tls_auth
    with RegistryClient(reg.host, ca_file=reg.ca_file, credentials=reg.credentials) as client:
        client.check_login()
        body, media_type, digest = client.get_manifest("private/img", "v1")
        assert (body, media_type, digest) == (tls_image.manifest, OCI_MANIFEST, tls_image.manifest_digest)
        blob = client.fetch_blob("private/img", tls_image.layer_digest, len(tls_image.layer), tmp_path / "l")
        assert blob.read_bytes() == tls_image.layer
        assert client.upload_blob("private/copy", tls_image.layer_digest, blob, len(tls_image.layer),
                                  mount_from="private/img") == "mounted"
        config = tls_image.blob_path(tls_image.config_digest)
        assert client.upload_blob("private/copy", tls_image.config_digest, config) == "uploaded"
        assert client.put_manifest("private/copy", "v1", tls_image.manifest, OCI_MANIFEST) == digest
        assert client.list_tags("private/copy") == ["v1"]


def test_tls_without_ca_needs_insecure(registry_tls_auth, tls_image):
    reg = registry_tls_auth
    with RegistryClient(reg.host, credentials=reg.credentials, retries=0) as client:
        with pytest.raises(RegistryError) as info:
            client.get_manifest("private/img", "v1")
    message = str(info.value)
    assert message.startswith(f"TLS certificate verification failed for {reg.host}")
    assert "--insecure" in message and "CA" in message and "\n" not in message
    with RegistryClient(reg.host, credentials=reg.credentials, insecure=True) as client:
        assert client.get_manifest("private/img", "v1")[2] == tls_image.manifest_digest
        assert client.base_url == f"https://{reg.host}"


def test_plain_http_registry_needs_insecure(registry_http, pushed):
    with RegistryClient(registry_http.host, retries=0) as client:
        with pytest.raises(RegistryError) as info:
            client.get_manifest("e2e/oci", "v1")
    assert str(info.value).startswith(f"TLS handshake with {registry_http.host} failed")
    assert "--insecure" in str(info.value)
    with RegistryClient(registry_http.host, insecure=True) as client:
        assert client.get_manifest("e2e/oci", "v1")[2] == pushed.manifest_digest
        assert client.base_url == f"http://{registry_http.host}"


def test_connection_refused_is_clear():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once the socket is closed
    start = time.monotonic()
    with RegistryClient(f"127.0.0.1:{port}") as client:
        with pytest.raises(RegistryError) as info:
            client.get_manifest("x/y", "latest")
    assert str(info.value).startswith(f"cannot connect to registry 127.0.0.1:{port}: connection refused")
    assert time.monotonic() - start < 5  # refused is not retried


# --------------------------------------------------------------------------- Docker token auth


def test_token_auth_push_and_pull(registry_token, make_oci_image, tmp_path):
    reg, tokens = registry_token, registry_token.token_server
    info = make_oci_image(tmp_path / "layout", "v1", {"etc/tok": "bearer\n"})
    with RegistryClient(reg.host, insecure=True, credentials=reg.credentials) as client:
        client.check_login()
        for digest in (info.config_digest, info.layer_digest):
            if not client.blob_exists("private/tok", digest):
                client.upload_blob("private/tok", digest, info.blob_path(digest))
        assert client.put_manifest("private/tok", "v1", info.manifest, OCI_MANIFEST) == info.manifest_digest
        asked = len(tokens.requests)
        body, _, digest = client.get_manifest("private/tok", "v1")
        assert body == info.manifest
        client.get_manifest("private/tok", digest)
        assert client.fetch_blob("private/tok", info.layer_digest, len(info.layer), tmp_path / "l").read_bytes() \
            == info.layer
        assert client.list_tags("private/tok") == ["v1"]
    # one token per scope, cached: the pull scope was already fetched for blob_exists
    assert len(tokens.requests) == asked
    assert all(user == reg.username for user, _ in tokens.requests[-3:])
    assert ["repository:private/tok:pull,push"] in [scopes for _, scopes in tokens.requests]


def test_token_auth_anonymous(registry_token, make_oci_image, tmp_path):
    reg = registry_token
    info = make_oci_image(tmp_path / "layout", "v1", {"etc/pub": "public\n"})
    with RegistryClient(reg.host, insecure=True, credentials=reg.credentials) as client:
        for digest in (info.config_digest, info.layer_digest):
            client.upload_blob("public/img", digest, info.blob_path(digest))
            client.upload_blob("private/anon", digest, info.blob_path(digest))
        client.put_manifest("public/img", "v1", info.manifest, OCI_MANIFEST)
        client.put_manifest("private/anon", "v1", info.manifest, OCI_MANIFEST)
    with RegistryClient(reg.host, insecure=True) as client:  # anonymous token: pull on public/* only
        assert client.get_manifest("public/img", "v1")[2] == info.manifest_digest
        with pytest.raises(RegistryError) as error:
            client.get_manifest("private/anon", "v1")
        assert str(error.value) == f"authentication required for {reg.host} (yurt registry login {reg.host})"
        with pytest.raises(RegistryError, match="authentication required"):
            client.upload_blob("public/img", info.config_digest, info.blob_path(info.config_digest))


def test_token_auth_wrong_password(registry_token):
    reg = registry_token
    with RegistryClient(reg.host, insecure=True, credentials=(reg.username, "nope")) as client:
        with pytest.raises(RegistryError) as error:
            client.check_login()
        assert str(error.value) == f"authentication failed for {reg.host} (yurt registry login {reg.host})"
        with pytest.raises(RegistryError, match="authentication failed"):
            client.get_manifest("public/img", "v1")


# --------------------------------------------------------------------------- faults


class FaultProxy:
    """A plain-HTTP proxy to a registry that can break blob downloads on purpose.

    ``drops``: how many blob GETs to cut off after half the body; ``errors``:
    how many blob GETs to answer 500; ``corrupt``: flip a byte of every blob
    body; ``ignore_range``: drop the Range header (the registry answers 200).
    ``log`` records ``(method, path, range, status)`` of blob GETs.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.drops = 0
        self.errors = 0
        self.corrupt = False
        self.ignore_range = False
        self.log: list[tuple[str, str, str | None, int]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # noqa: A002 - the base class's name
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                blob_get = self.command == "GET" and "/blobs/sha256:" in self.path
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
                if blob_get and proxy.ignore_range:
                    headers = {k: v for k, v in headers.items() if k.lower() != "range"}
                with proxy.lock:
                    fail = blob_get and proxy.errors > 0
                    if fail:
                        proxy.errors -= 1
                if fail:
                    payload = b'{"errors":[{"code":"UNKNOWN","message":"injected failure"}]}'
                    proxy.log.append((self.command, self.path, self.headers.get("Range"), 500))
                    self.send_response(500)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    resp_headers = resp.getheaders()
                    status, reason = resp.status, resp.reason
                finally:
                    conn.close()
                if blob_get:
                    proxy.log.append((self.command, self.path, self.headers.get("Range"), status))
                if blob_get and proxy.corrupt and data:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                self.send_response(status, reason)
                for key, value in resp_headers:
                    if key.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                with proxy.lock:
                    drop = blob_get and status in (200, 206) and proxy.drops > 0 and len(data) > 1
                    if drop:
                        proxy.drops -= 1
                if drop:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                self.wfile.write(data)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        return Handler


@pytest.fixture
def fault_proxy(registry_http):
    proxy = FaultProxy(registry_http.host)
    yield proxy
    proxy.close()


def _blob_gets(proxy: FaultProxy, digest: str) -> list[tuple[str | None, int]]:
    return [(rng, status) for method, path, rng, status in proxy.log if path.endswith(digest)]


def test_dropped_download_resumes_with_range(fault_proxy, big_blob, tmp_path):
    digest, data = big_blob
    fault_proxy.drops = 1
    with RegistryClient(fault_proxy.host, insecure=True, backoff=0.01) as client:
        dest = client.fetch_blob("e2e/big", digest, len(data), tmp_path / "blob")
    assert dest.read_bytes() == data
    gets = _blob_gets(fault_proxy, digest)
    assert len(gets) == 2 and gets[0] == (None, 200)
    assert gets[1][0] is not None and gets[1][0].startswith("bytes=") and gets[1][1] == 206
    assert 0 < int(gets[1][0][len("bytes="):].rstrip("-")) < len(data)
    assert os.listdir(tmp_path) == ["blob"]


def test_dropped_download_restarts_without_range(fault_proxy, big_blob, tmp_path):
    digest, data = big_blob
    fault_proxy.drops = 1
    fault_proxy.ignore_range = True
    seen = []
    with RegistryClient(fault_proxy.host, insecure=True, backoff=0.01) as client:
        dest = client.fetch_blob("e2e/big", digest, len(data), tmp_path / "blob", lambda d, t: seen.append(d))
    assert dest.read_bytes() == data
    assert [status for _, status in _blob_gets(fault_proxy, digest)] == [200, 200]
    assert seen[-1] == len(data)
    assert os.listdir(tmp_path) == ["blob"]


def test_server_errors_are_retried(fault_proxy, big_blob, tmp_path):
    digest, data = big_blob
    fault_proxy.errors = 2
    with RegistryClient(fault_proxy.host, insecure=True, backoff=0.01) as client:
        assert client.fetch_blob("e2e/big", digest, len(data), tmp_path / "blob").read_bytes() == data
    assert [status for _, status in _blob_gets(fault_proxy, digest)] == [500, 500, 200]


def test_persistent_server_errors_give_up(fault_proxy, big_blob, tmp_path):
    digest, data = big_blob
    fault_proxy.errors = 100
    with RegistryClient(fault_proxy.host, insecure=True, backoff=0.01, retries=2) as client:
        with pytest.raises(RegistryError) as info:
            client.fetch_blob("e2e/big", digest, len(data), tmp_path / "blob")
    assert str(info.value).startswith(f"registry {fault_proxy.host}: UNKNOWN: injected failure")
    assert len(_blob_gets(fault_proxy, digest)) == 3
    assert os.listdir(tmp_path) == []


def test_corrupted_blob_is_refused_and_nothing_is_left(fault_proxy, big_blob, tmp_path):
    digest, data = big_blob
    fault_proxy.corrupt = True
    with RegistryClient(fault_proxy.host, insecure=True, backoff=0.01) as client:
        with pytest.raises(RegistryError) as info:
            client.fetch_blob("e2e/big", digest, len(data), tmp_path / "blob")
    assert str(info.value).startswith(f"digest mismatch for {digest}")
    assert not (tmp_path / "blob").exists()
    assert os.listdir(tmp_path) == []
