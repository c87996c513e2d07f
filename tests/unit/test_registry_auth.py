"""Registry credentials: lookup order, yurt's 0600 store, Docker/podman auth files, insecure hosts."""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest

from yurt.errors import YurtError
from yurt.registry import auth


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("XDG_CONFIG_HOME", "REGISTRY_AUTH_FILE", "YURT_DOCKER_USERNAME", "YURT_DOCKER_PASSWORD",
                 "YURT_INSECURE_REGISTRIES", "YURT_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    return home


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _write(path, doc) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def test_nothing_configured():
    assert auth.credentials_for("127.0.0.1:5000") is None
    assert auth.list_logins() == []
    assert auth.remove_login("127.0.0.1:5000") is False


def test_save_login_file_format_and_modes(home):
    path = auth.save_login("127.0.0.1:5000", "alice", "pa:ss word")
    assert path == home / ".config" / "yurt" / "auth.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert json.loads(path.read_text()) == {"auths": {"127.0.0.1:5000": {"auth": _b64("alice:pa:ss word")}}}
    assert auth.credentials_for("127.0.0.1:5000") == ("alice", "pa:ss word")
    assert auth.credentials_for("127.0.0.1:5001") is None
    assert os.listdir(path.parent) == ["auth.json"]  # no temp file left behind


def test_save_login_keeps_other_hosts_and_replaces_atomically(home):
    path = auth.save_login("a.example", "u1", "p1")
    path.chmod(0o644)
    with open(path, "rb") as old:  # held open, so its inode cannot be reused
        auth.save_login("b.example:443", "u2", "p2")
        assert path.stat().st_ino != os.fstat(old.fileno()).st_ino  # renamed over, not rewritten in place
        assert json.loads(old.read()) == {"auths": {"a.example": {"auth": _b64("u1:p1")}}}
    auth.save_login("a.example", "u1", "new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert auth.credentials_for("a.example") == ("u1", "new")
    assert auth.credentials_for("b.example:443") == ("u2", "p2")
    assert auth.list_logins() == [("a.example", "u1"), ("b.example:443", "u2")]
    assert sorted(os.listdir(path.parent)) == ["auth.json"]


def test_save_login_keeps_unknown_keys(home):
    path = home / ".config" / "yurt" / "auth.json"
    _write(path, {"auths": {}, "other": {"kept": True}})
    auth.save_login("h.io", "u", "p")
    assert json.loads(path.read_text())["other"] == {"kept": True}


def test_save_login_refuses_bad_user():
    with pytest.raises(YurtError, match="invalid user name"):
        auth.save_login("h.io", "a:b", "p")
    with pytest.raises(YurtError, match="invalid user name"):
        auth.save_login("h.io", "", "p")


def test_remove_login():
    auth.save_login("a.example", "u1", "p1")
    auth.save_login("b.example", "u2", "p2")
    assert auth.remove_login("a.example") is True
    assert auth.remove_login("a.example") is False
    assert auth.credentials_for("a.example") is None
    assert auth.credentials_for("b.example") == ("u2", "p2")
    assert stat.S_IMODE(auth.store_path().stat().st_mode) == 0o600


def test_docker_hub_aliases(home):
    auth.save_login("docker.io", "hubuser", "hubpass")
    assert auth.list_logins() == [("registry-1.docker.io", "hubuser")]
    for host in ("docker.io", "index.docker.io", "registry-1.docker.io", "https://index.docker.io/v1/"):
        assert auth.credentials_for(host) == ("hubuser", "hubpass")
    assert auth.remove_login("index.docker.io") is True


def test_xdg_config_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert auth.save_login("h.io", "u", "p") == tmp_path / "xdg" / "yurt" / "auth.json"
    assert auth.credentials_for("h.io") == ("u", "p")


def test_lookup_order(home, tmp_path, monkeypatch):
    docker = home / ".docker" / "config.json"
    podman = tmp_path / "podman-auth.json"
    _write(docker, {"auths": {"h.io": {"auth": _b64("docker:d")}}})
    assert auth.credentials_for("h.io") == ("docker", "d")
    _write(podman, {"auths": {"h.io": {"auth": _b64("podman:p")}}})
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(podman))
    assert auth.credentials_for("h.io") == ("podman", "p")
    auth.save_login("h.io", "yurt", "y")
    assert auth.credentials_for("h.io") == ("yurt", "y")
    monkeypatch.setenv("YURT_DOCKER_USERNAME", "env")
    assert auth.credentials_for("h.io") == ("yurt", "y")  # both variables are needed
    monkeypatch.setenv("YURT_DOCKER_PASSWORD", "e")
    assert auth.credentials_for("h.io") == ("env", "e")
    assert auth.credentials_for("any.other.host") == ("env", "e")
    # falling through: a host only the docker file knows
    monkeypatch.delenv("YURT_DOCKER_USERNAME")
    _write(docker, {"auths": {"h.io": {"auth": _b64("docker:d")}, "only-docker.io": {"auth": _b64("od:x")}}})
    assert auth.credentials_for("only-docker.io") == ("od", "x")


def test_docker_config_variants(home):
    docker = home / ".docker" / "config.json"
    _write(docker, {"auths": {
        "https://index.docker.io/v1/": {"auth": _b64("hub:secret")},
        "http://plain.example:5000": {"auth": _b64("plain:pw")},
        "userpass.example": {"username": "up", "password": "pw2"},
        "quay.io/some-org": {"auth": _b64("org:only")},  # podman's per-repository key: not the whole host
        "empty.example": {},
    }})
    assert auth.credentials_for("docker.io") == ("hub", "secret")
    assert auth.credentials_for("plain.example:5000") == ("plain", "pw")
    assert auth.credentials_for("userpass.example") == ("up", "pw2")
    assert auth.credentials_for("quay.io") is None
    assert auth.credentials_for("empty.example") is None


def test_cred_helpers_are_ignored_with_a_debug_note(home, monkeypatch, capsys):
    _write(home / ".docker" / "config.json", {"credHelpers": {"h.io": "secretservice"}, "credsStore": "desktop"})
    monkeypatch.setenv("YURT_DEBUG", "1")
    assert auth.credentials_for("h.io") is None
    assert "yurt does not run helpers" in capsys.readouterr().err
    assert auth.credentials_for("other.io") is None
    assert "credsStore 'desktop' ignored" in capsys.readouterr().err
    monkeypatch.delenv("YURT_DEBUG")
    auth.credentials_for("h.io")
    assert capsys.readouterr().err == ""


def test_broken_files_fail_in_one_line(home):
    store = auth.store_path()
    store.parent.mkdir(parents=True)
    store.write_text("{not json")
    with pytest.raises(YurtError) as info:
        auth.credentials_for("h.io")
    assert str(info.value) == f"{store} is not valid JSON (fix or remove the file)"
    store.write_text(json.dumps({"auths": {"h.io": {"auth": "%%%"}}}))
    with pytest.raises(YurtError, match="not base64 of user:password"):
        auth.credentials_for("h.io")
    store.write_text(json.dumps({"auths": {"h.io": {"auth": _b64("nocolon")}}}))
    with pytest.raises(YurtError, match="no ':'"):
        auth.credentials_for("h.io")
    store.write_text("")  # an empty file is an empty store
    assert auth.credentials_for("h.io") is None


def test_insecure_registries(monkeypatch):
    assert not auth.is_insecure("127.0.0.1:5000")
    monkeypatch.setenv("YURT_INSECURE_REGISTRIES", " 127.0.0.1:5000, http://reg.local/ ,,docker.io")
    assert auth.insecure_registries() == {"127.0.0.1:5000", "reg.local", "registry-1.docker.io"}
    assert auth.is_insecure("127.0.0.1:5000")
    assert auth.is_insecure("reg.local")
    assert auth.is_insecure("index.docker.io")
    assert not auth.is_insecure("127.0.0.1:5001")


def test_parse_challenge():
    from yurt.registry.challenge import parse_challenge
    assert parse_challenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                                  'scope="repository:library/busybox:pull,push"') == (
        "bearer", {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                   "scope": "repository:library/busybox:pull,push"})
    assert parse_challenge('Basic realm="basic-realm"') == ("basic", {"realm": "basic-realm"})
    assert parse_challenge('Bearer realm="r", error="insufficient_scope", x=plain') == (
        "bearer", {"realm": "r", "error": "insufficient_scope", "x": "plain"})
    assert parse_challenge('Bearer realm="a \\"quoted\\" realm"') == ("bearer", {"realm": 'a "quoted" realm'})
    assert parse_challenge("") is None
