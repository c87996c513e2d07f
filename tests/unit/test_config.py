"""yurt.config: parsing, precedence (default < site < user < env), site-only policy keys, errors,
and the policy checks (binds, images, registries) as the planner and the registry client use them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from yurt import config, configfile
from yurt.errors import ConfigError, PolicyError
from yurt.image.source import Image
from yurt.registry.policy import allows, check_reference
from yurt.registry.reference import parse_reference
from yurt.runtime.plan import ActionRequest, plan_container

IS_ROOT = os.geteuid() == 0
LOAD = config.load  # the real one: some tests make yurt.config.load read the test's files


@pytest.fixture
def files(tmp_path, monkeypatch):
    """An environment whose site file (through YURT_SITE_CONFIG) and user file are under tmp_path.

    ``/etc/yurt/yurt.toml`` is replaced by ``etc_site``, absent until a test writes it (then
    YURT_SITE_CONFIG is ignored, as it is when a real site file exists).
    """
    etc = tmp_path / "etc"
    etc.mkdir()
    monkeypatch.setattr(config, "SITE_CONFIG", str(etc / "yurt.toml"))
    home = tmp_path / "home"
    (home / ".config" / "yurt").mkdir(parents=True)

    class Files:
        def __init__(self) -> None:
            self.etc_site = etc / "yurt.toml"
            self.site = tmp_path / "site.toml"
            self.user = home / ".config" / "yurt" / "config.toml"
            self.env = {"HOME": str(home), "YURT_SITE_CONFIG": str(self.site)}

        def load(self, **env: str):
            return LOAD({**self.env, **env})

    return Files()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    os.chmod(path, 0o644)
    return path


# ------------------------------------------------------------------ files and precedence


def test_no_files_gives_defaults(files):
    cfg = files.load()
    assert cfg.site_file is None and cfg.user_file is None
    assert set(cfg.sources.values()) == {"default"}
    assert cfg.site_binds == () and cfg.deny_binds == ()
    assert cfg.allowed_image_paths is None and cfg.allowed_registries is None
    assert cfg.contain is False and cfg.squashfs_threads == 0
    assert cfg.cache_dir == files.env["HOME"] + "/.cache/yurt"
    assert cfg.local_cache_dir == f"/var/tmp/yurt-{os.getuid()}"


def test_site_then_user_then_env(files):
    write(files.site, 'contain = true\ncache_dir = "/site/cache"\nlocal_cache_dir = "/site/local"\n')
    cfg = files.load()
    assert (cfg.contain, cfg.cache_dir) == (True, "/site/cache")
    assert cfg.sources["contain"] == f"site file {files.site}"
    write(files.user, 'contain = false\ncache_dir = "/user/cache"\n')
    cfg = files.load()
    assert (cfg.contain, cfg.cache_dir, cfg.local_cache_dir) == (False, "/user/cache", "/site/local")
    assert cfg.sources["cache_dir"] == f"user file {files.user}"
    assert cfg.sources["local_cache_dir"] == f"site file {files.site}"
    cfg = files.load(YURT_CACHEDIR="/env/cache", YURT_CONTAIN="yes")
    assert (cfg.cache_dir, cfg.contain) == ("/env/cache", True)
    assert cfg.sources["cache_dir"] == "env YURT_CACHEDIR" and cfg.sources["contain"] == "env YURT_CONTAIN"


def test_empty_cachedir_variable_is_ignored_and_relative_one_made_absolute(files, tmp_path, monkeypatch):
    assert files.load(YURT_CACHEDIR="").sources["cache_dir"] == "default"
    monkeypatch.chdir(tmp_path)
    assert files.load(YURT_LOCAL_CACHEDIR="rel/dir").local_cache_dir == str(tmp_path / "rel" / "dir")


def test_xdg_config_home_is_honoured_when_absolute(files, tmp_path):
    xdg = tmp_path / "xdg"
    (xdg / "yurt").mkdir(parents=True)
    write(xdg / "yurt" / "config.toml", "contain = true\n")
    assert files.load(XDG_CONFIG_HOME=str(xdg)).contain is True
    assert config.user_path({"HOME": "/h", "XDG_CONFIG_HOME": "relative"}) == "/h/.config/yurt/config.toml"


def test_placeholders_in_paths(files):
    import pwd

    write(files.site, 'cache_dir = "/scratch/{user}/c"\nlocal_cache_dir = "/tmp/l-{uid}"\n')
    write(files.user, 'cache_dir = "{home}/mine"\n')
    cfg = files.load()
    assert cfg.cache_dir == files.env["HOME"] + "/mine"
    assert cfg.local_cache_dir == f"/tmp/l-{os.getuid()}"
    files.user.unlink()
    assert files.load().cache_dir == f"/scratch/{pwd.getpwuid(os.getuid()).pw_name}/c"


def test_squashfs_threads_site_value_is_a_ceiling(files):
    write(files.site, "squashfs_threads = 4\n")
    assert files.load().squashfs_threads == 4
    write(files.user, "squashfs_threads = 8\n")
    cfg = files.load()
    assert cfg.squashfs_threads == 4 and cfg.sources["squashfs_threads"].startswith("site file")
    write(files.user, "squashfs_threads = 2\n")
    assert files.load().squashfs_threads == 2
    assert files.load(YURT_SQUASHFS_THREADS="3").squashfs_threads == 3
    assert files.load(YURT_SQUASHFS_THREADS="0").squashfs_threads == 4  # 0 ("no limit") cannot lift the cap
    assert files.load(YURT_SQUASHFS_THREADS="99").squashfs_threads == 4
    files.site.unlink()
    assert files.load(YURT_SQUASHFS_THREADS="99").squashfs_threads == 99  # no site cap


def test_thread_limit_caps_squashfs_processors(files, monkeypatch):
    from yurt.image import squashfs

    write(files.site, "squashfs_threads = 1\n")
    monkeypatch.setattr(config, "load", lambda environ=None: files.load())
    assert squashfs.default_processors() == 1
    assert squashfs.thread_count(16) == 1
    write(files.site, "squashfs_threads = 0\n")
    assert squashfs.thread_count(16) == 16


def test_files_are_reparsed_when_they_change(files):
    write(files.user, "contain = true\n")
    assert files.load().contain is True
    write(files.user, "contain = false\n# a longer file now\n")
    assert files.load().contain is False


# ------------------------------------------------------------------ site-only keys and the site path


@pytest.mark.parametrize("key,value", [("deny_binds", "[]"), ("allowed_registries", '["x.org"]'),
                                       ("site_binds", '["/a"]'), ("allowed_image_paths", '["/"]'),
                                       ("allowed_image_owners", "[0]"), ("require_signed_images", "false")])
def test_user_file_cannot_set_policy(files, key, value):
    write(files.user, f"contain = true\n\n{key} = {value}\n")
    with pytest.raises(ConfigError) as e:
        files.load()
    assert str(files.user) in str(e.value) and "line 3" in str(e.value) and "site policy" in str(e.value)


def test_site_override_only_when_no_site_file(files):
    write(files.site, 'deny_binds = ["/loose"]\n')
    cfg = files.load()
    assert cfg.deny_binds == ("/loose",) and cfg.site_file == str(files.site)
    write(files.etc_site, 'deny_binds = ["/secret"]\n')
    os.chmod(files.etc_site, 0o444)
    os.chmod(files.etc_site.parent, 0o555)  # a user cannot write the real one either
    try:
        cfg = files.load()
    finally:
        os.chmod(files.etc_site.parent, 0o755)
    assert cfg.deny_binds == ("/secret",) and cfg.site_file == str(files.etc_site)
    assert cfg.notes and "ignored" in cfg.notes[0]


def test_require_signed_images_true_is_rejected(files):
    write(files.site, "require_signed_images = false\n")
    assert files.load().require_signed_images is False
    write(files.site, "require_signed_images = true\n")
    with pytest.raises(ConfigError, match="cannot sign or verify"):
        files.load()


@pytest.mark.skipif(IS_ROOT, reason="root may write anything; the check is for users")
def test_site_file_writable_by_the_user_is_refused(files):
    write(files.etc_site, "contain = true\n")
    with pytest.raises(ConfigError, match="writable by you"):
        files.load()
    os.chmod(files.etc_site, 0o444)
    with pytest.raises(ConfigError, match="writable by you"):  # the directory still is: it could be replaced
        files.load()


@pytest.mark.skipif(IS_ROOT, reason="root reads any file")
def test_unreadable_site_file_is_an_error(files):
    write(files.etc_site, "contain = true\n")
    os.chmod(files.etc_site, 0)
    os.chmod(files.etc_site.parent, 0o555)  # so the writable check passes and reading fails
    try:
        with pytest.raises(ConfigError, match="cannot read the site config"):
            files.load()
    finally:
        os.chmod(files.etc_site.parent, 0o755)


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("text,line,words", [
    ('contain = true\nbogus = 1\n', 2, "unknown key 'bogus'"),
    ('contain = "yes"\n', 1, "expected true or false, got a string"),
    ('\n\nsquashfs_threads = -1\n', 3, "whole number"),
    ('squashfs_threads = true\n', 1, "whole number"),
    ('deny_binds = "/x"\n', 1, "expected a list of absolute paths, got a string"),
    ('deny_binds = ["relative"]\n', 1, "not an absolute path"),
    ('site_binds = ["/a:/b:xx"]\n', 1, "bad bind option"),
    ('site_binds = ["/a:rel"]\n', 1, "must be absolute"),
    ('allowed_image_owners = [true]\n', 1, "not a user name or uid"),
    ('allowed_registries = ["https://x.org"]\n', 1, "no scheme"),
    ('cache_dir = "relative"\n', 1, "not an absolute path"),
    ('\n[images]\npaths = []\n', 2, "unknown key 'images'"),
])
def test_errors_name_file_key_and_line(files, text, line, words):
    write(files.site, text)
    with pytest.raises(ConfigError) as e:
        files.load()
    msg = str(e.value)
    assert msg.startswith(f"{files.site}: line {line}: ") and words in msg


def test_toml_syntax_error_names_the_file(files):
    write(files.user, "contain = \n")
    with pytest.raises(ConfigError, match=rf"{files.user}: not valid TOML: .*line 1"):
        files.load()


def test_bad_environment_value(files):
    with pytest.raises(ConfigError, match="YURT_SQUASHFS_THREADS"):
        files.load(YURT_SQUASHFS_THREADS="many")
    with pytest.raises(ConfigError, match="YURT_CONTAIN"):
        files.load(YURT_CONTAIN="maybe")


# ------------------------------------------------------------------ bind and image checks


def test_denied_bind_equal_beneath_and_above(files, tmp_path):
    secret = tmp_path / "data" / "secret"
    secret.mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(secret)
    write(files.site, f'deny_binds = ["{secret}"]\n')
    cfg = files.load()
    for p in (secret, secret / "sub", tmp_path / "data", tmp_path, "/", link, link / "x"):
        assert cfg.denied_bind(str(p)) == str(secret), p
    for p in (tmp_path / "data" / "secret2", tmp_path / "other"):
        assert cfg.denied_bind(str(p)) is None, p
    with pytest.raises(PolicyError, match="denies binding"):
        cfg.check_bind(str(link), "bind source")


def test_image_location_rules_follow_symlinks(files, tmp_path):
    allowed, other = tmp_path / "images", tmp_path / "mine"
    allowed.mkdir()
    other.mkdir()
    good, bad = allowed / "a.sif", other / "b.sif"
    good.write_bytes(b"x")
    bad.write_bytes(b"x")
    (allowed / "escape.sif").symlink_to(bad)
    (other / "alias.sif").symlink_to(good)
    write(files.site, f'allowed_image_paths = ["{allowed}"]\n')
    cfg = files.load()
    cfg.check_image(str(good))
    cfg.check_image(str(other / "alias.sif"))
    for p in (bad, allowed / "escape.sif", tmp_path / "imagesX"):
        with pytest.raises(PolicyError, match="not in a location the site allows"):
            cfg.check_image(str(p))
    write(files.site, "allowed_image_paths = []\n")
    with pytest.raises(PolicyError):
        files.load().check_image(str(good))


def test_image_owner_rules(files, tmp_path):
    img = tmp_path / "a.sif"
    img.write_bytes(b"x")
    me = os.getuid()
    write(files.site, f"allowed_image_owners = [{me}]\n")
    files.load().check_image(str(img))
    write(files.site, f"allowed_image_owners = [{me + 1}, \"root\"]\n" if me else "allowed_image_owners = [1]\n")
    with pytest.raises(PolicyError, match="owned by"):
        files.load().check_image(str(img))
    write(files.site, 'allowed_image_owners = ["no-such-user-yurt"]\n')
    with pytest.raises(ConfigError, match="no user 'no-such-user-yurt'"):
        files.load().check_image(str(img))


# ------------------------------------------------------------------ registries


@pytest.mark.parametrize("allowed,ref,ok", [
    (("registry.example.org",), "docker://registry.example.org/a/b:1", True),
    (("Registry.Example.org",), "docker://registry.example.org/a/b:1", True),
    (("registry.example.org",), "docker://other.org/a/b:1", False),
    (("localhost:5000",), "docker://localhost:5000/x", True),
    (("localhost:5000",), "docker://localhost:5001/x", False),
    (("docker.io",), "docker://debian:12", True),
    (("docker.io/library",), "docker://debian:12", True),
    (("docker.io/library",), "docker://someone/debian:12", False),
    (("index.docker.io/library/",), "docker://library/debian", True),
    (("quay.io/org",), "docker://quay.io/org/tool:1", True),
    (("quay.io/org",), "docker://quay.io/org-x/tool:1", False),
    (("quay.io/org/tool",), "oras://quay.io/org/tool:1", True),
    ((), "docker://debian", False),
])
def test_allowed_registries(allowed, ref, ok):
    assert allows(allowed, parse_reference(ref)) is ok


def test_check_reference_uses_the_site_config(files):
    ref = parse_reference("docker://quay.io/org/tool:1")
    check_reference(ref, files.load())  # not set: anything goes
    write(files.site, 'allowed_registries = ["registry.example.org"]\n')
    with pytest.raises(PolicyError, match="registry quay.io .* is not allowed"):
        check_reference(ref, files.load())


def test_pull_and_push_refuse_before_any_network(files, monkeypatch, tmp_path):
    from yurt.registry import pull as pull_mod
    from yurt.registry.push import push

    write(files.site, 'allowed_registries = ["registry.example.org"]\n')
    monkeypatch.setattr(config, "load", lambda environ=None: files.load())
    monkeypatch.setattr("yurt.registry.client.RegistryClient.__init__",
                        lambda *a, **k: pytest.fail("a client was made for a refused registry"))
    from yurt.store.cache import Store

    store = Store(tmp_path / "cache", local_root=tmp_path / "local")
    with pytest.raises(PolicyError):
        pull_mod.pull("docker://quay.io/org/tool:1", store=store)
    with pytest.raises(PolicyError):
        pull_mod.pull("oras://quay.io/org/tool:1", store=store)
    with pytest.raises(PolicyError):
        push(str(tmp_path), "docker://quay.io/org/tool:1")


# ------------------------------------------------------------------ the planner


def _req(path="/img", **kw):
    return ActionRequest(action="exec", image=Image(path=path, kind="sandbox"), args=["true"], **kw)


def _dests(spec):
    return [m.destination for m in spec.mounts]


def test_plan_adds_existing_site_binds_and_lets_user_binds_win(files, tmp_path):
    scratch, data = tmp_path / "scratch", tmp_path / "data"
    scratch.mkdir()
    data.mkdir()
    write(files.site, f'site_binds = ["{scratch}:/scratch:ro", "{tmp_path}/missing:/gone", "{scratch}:/data"]\n')
    spec = plan_container(_req(binds=[f"{data}:/data"]), host_env=files.env, config=files.load())
    by_dest = {m.destination: m for m in spec.mounts}
    assert by_dest["/scratch"].source == str(scratch) and by_dest["/scratch"].readonly
    assert "/gone" not in by_dest
    assert by_dest["/data"].source == str(data) and _dests(spec).count("/data") == 1
    off = plan_container(_req(site=False), host_env=files.env, config=files.load())
    assert "/scratch" not in _dests(off)


def test_plan_refuses_denied_binds(files, tmp_path):
    secret = tmp_path / "secret"
    secret.mkdir()
    write(files.site, f'deny_binds = ["{secret}"]\n')
    cfg = files.load()
    for kw in ({"binds": [f"{secret}:/x"]}, {"binds": [f"{tmp_path}:/x:ro"]}, {"home": str(secret)},
               {"overlays": [f"{secret}:ro"]}, {"contain": True, "workdir": str(secret)}):
        with pytest.raises(PolicyError, match="denies binding"):
            plan_container(_req(**kw), host_env=files.env, config=cfg)
    # a home directory inside a denied tree is refused unless the user opts out of binding it
    env = {**files.env, "HOME": str(secret)}
    with pytest.raises(PolicyError, match="home directory"):
        plan_container(_req(), host_env=env, config=cfg)
    plan_container(_req(no_home=True), host_env=env, config=cfg)
    plan_container(_req(binds=[f"{secret}:/x"], site=False), host_env=files.env, config=cfg)


def test_plan_skips_working_directory_under_a_denied_path(files, tmp_path, monkeypatch):
    secret = tmp_path / "secret"
    secret.mkdir()
    monkeypatch.chdir(secret)
    spec = plan_container(_req(), host_env=files.env, config=files.load())
    assert str(secret) in _dests(spec)
    write(files.site, f'deny_binds = ["{secret}"]\n')
    spec = plan_container(_req(), host_env=files.env, config=files.load())
    assert str(secret) not in _dests(spec)


def test_plan_contain_default_from_config(files):
    write(files.user, "contain = true\n")
    cfg = files.load()
    kinds = lambda spec: {m.destination: m.kind for m in spec.mounts}  # noqa: E731
    assert kinds(plan_container(_req(contain=None), host_env=files.env, config=cfg))["/tmp"] == "tmpfs"
    assert kinds(plan_container(_req(contain=False), host_env=files.env, config=cfg))["/tmp"] == "bind"
    assert kinds(plan_container(_req(contain=None, site=False), host_env=files.env, config=cfg))["/tmp"] == "bind"


def test_plan_checks_what_the_user_named(files, tmp_path):
    allowed = tmp_path / "images"
    allowed.mkdir()
    archive = tmp_path / "mine.tar"
    archive.write_bytes(b"")
    write(files.site, f'allowed_image_paths = ["{allowed}"]\n')
    cfg = files.load()
    plan_container(_req(str(allowed)), host_env=files.env, config=cfg)
    with pytest.raises(PolicyError):
        plan_container(_req(str(tmp_path)), host_env=files.env, config=cfg)
    # a cached SIF from a registry: the registry policy applied when it was pulled
    plan_container(_req(str(tmp_path), image_ref="docker://debian:12"), host_env=files.env, config=cfg)
    # a local OCI archive: its own path is what counts, not the converted SIF in the cache
    with pytest.raises(PolicyError, match="mine.tar"):
        plan_container(_req(str(allowed), image_ref=f"oci-archive:{archive}"), host_env=files.env, config=cfg)
    plan_container(_req(str(tmp_path), site=False), host_env=files.env, config=cfg)


# ------------------------------------------------------------------ the cache and the flags


def test_store_locations_come_from_the_config(files, monkeypatch, tmp_path):
    from yurt.store import cache

    write(files.user, f'cache_dir = "{tmp_path}/c"\nlocal_cache_dir = "{tmp_path}/l"\n')
    monkeypatch.setattr(config, "load", lambda environ=None: files.load())
    assert cache.default_root() == tmp_path / "c"
    assert cache.default_local_root() == tmp_path / "l"
    store = cache.Store()
    assert store.root == tmp_path / "c" and store.unpacked == tmp_path / "l" / "unpacked"


def test_contain_flag_is_none_unless_given():
    from yurt.cli.actions import FLAGS
    from yurt.cli.options import parse

    def contain(argv, env=None):
        return parse(argv, FLAGS, stop_at_positional=True, environ=env or {})[0]["contain"]

    assert contain(["img"]) is None
    assert contain(["-c", "img"]) is True
    assert contain(["--contain=false", "img"]) is False
    assert contain(["img"], {"YURT_CONTAIN": "0"}) is False


@pytest.mark.skipif(os.path.lexists("/etc/yurt/yurt.toml"), reason="a real site file is installed")
def test_config_show_json_names_each_source(yurt_cmd, tmp_path):
    site = write(tmp_path / "site.toml", 'deny_binds = ["/x"]\nsquashfs_threads = 2\n')
    xdg = tmp_path / "xdg"
    (xdg / "yurt").mkdir(parents=True)
    write(xdg / "yurt" / "config.toml", "contain = true\n")
    env = {"YURT_SITE_CONFIG": str(site), "XDG_CONFIG_HOME": str(xdg), "YURT_CACHEDIR": str(tmp_path / "c")}
    r = yurt_cmd("config", "show", "--json", env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    s = doc["settings"]
    assert s["deny_binds"] == {"value": ["/x"], "source": f"site file {site}", "scope": "site"}
    assert s["contain"]["value"] is True and s["contain"]["source"] == f"user file {xdg}/yurt/config.toml"
    assert s["cache_dir"]["source"] == "env YURT_CACHEDIR"
    assert s["allowed_registries"] == {"value": None, "source": "default", "scope": "site"}
    text = yurt_cmd("config", "show", env=env)
    assert text.returncode == 0 and "deny_binds = [\"/x\"]" in text.stdout and f"# site file {site}" in text.stdout
    bad = write(tmp_path / "bad.toml", "bogus = 1\n")
    r = yurt_cmd("config", "show", env={**env, "YURT_SITE_CONFIG": str(bad)})
    assert r.returncode == 255 and r.stderr.startswith(f"yurt: error: {bad}: line 1: unknown key 'bogus'")


# ------------------------------------------------------------------ the tomllib-free fast path


SIMPLE = [
    "",
    "\n\n# only a comment\n",
    "contain = true\n",
    "contain=false",
    "  contain   =   true   # trailing comment\n",
    "squashfs_threads = 0\nn = -12\nbig = 123456789012345678901234567890\n",
    'site_binds = ["/a", "/b:/c:ro"]\n',
    "site_binds = ['/lit \"quoted\"', \"/x#not-a-comment\"]  # real comment\n",
    "a = []\nb = [ ]\nc = [1, 2, 3,]\nd = [ \"x\" ,'y' , ]\n",
    'unicode = "/scratch/été"\n',
    "crlf = true\r\nother = 'x'\r\n",
    "k-e_y9 = 1\n\t# tab before comment\n",
    "x = 1#comment right after\n",
]

NOT_SIMPLE = [
    "[table]\nx = 1\n",  # tables
    'x = "esc\\"aped"\n',  # escapes
    'x = """multi"""\n',
    "x = [\n  1,\n]\n",  # multi-line array
    "x = 1.5\n",
    "x = 1_000\n",
    "x = +1\n",
    "x = 0x10\n",
    "x = 1979-05-27\n",
    '"quoted key" = 1\n',
    "a.b = 1\n",
    "x = {a = 1}\n",
    "x = [[1], [2]]\n",
    "x = 1\nx = 2\n",  # duplicate: tomllib reports it
    "x = \"tab\there\"\n",
    "x = 01\n",
    "x = True\n",
    "x = 1 2\n",
    "x =\n",
]


@pytest.mark.parametrize("text", SIMPLE)
def test_simple_subset_parses_exactly_as_tomllib_does(text):
    import tomllib

    assert configfile.parse_simple(text) == tomllib.loads(text)


@pytest.mark.parametrize("text", NOT_SIMPLE)
def test_anything_else_goes_to_tomllib(text):
    assert configfile.parse_simple(text) is None


def test_simple_site_file_does_not_import_tomllib(tmp_path):
    import subprocess
    import sys

    site = write(tmp_path / "site.toml", '# site\ndeny_binds = ["/x"]  # no\nsquashfs_threads = 2\n')
    code = ("import sys, yurt.config as c; cfg = c.load(); "
            "print(cfg.deny_binds, cfg.squashfs_threads, 'tomllib' in sys.modules)")
    env = {"HOME": str(tmp_path), "YURT_SITE_CONFIG": str(site), "PATH": os.environ.get("PATH", "")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if os.path.lexists("/etc/yurt/yurt.toml"):
        pytest.skip("a real site file is installed")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["('/x',)", "2", "False"]
