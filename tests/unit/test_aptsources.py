"""The host's package mirror from apt's sources: both formats, what is skipped, hostile files.

Every tree here is a made-up ``/etc/apt`` under ``tmp_path`` (mirror names under ``.example``).
"""

from __future__ import annotations

import os

import pytest

from yurt.builder import aptsources as apt
from yurt.builder import deffile
from yurt.errors import BuildError

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

DEB822 = f"""\
# written by the installer
Types: deb
# a comment inside the paragraph
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: {KEYRING}

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: {KEYRING}
"""


def make_root(tmp_path, files: dict[str, str], os_release: str = "ID=debian\nVERSION_CODENAME=bookworm\n"):
    root = tmp_path / "root"
    (root / "etc/apt/sources.list.d").mkdir(parents=True)
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/os-release").write_text(os_release)
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    for name, text in files.items():
        (root / "etc/apt" / name).write_text(text)
    return str(root)


# -- the two formats ------------------------------------------------------------------------------


def test_deb822_paragraphs_give_one_entry_per_uri_and_suite():
    found = apt.parse_deb822(DEB822, "x.sources")
    assert [(s.uri, s.suite) for s in found] == [
        ("http://mirror.example/debian", "bookworm"),
        ("http://mirror.example/debian", "bookworm-updates"),
        ("http://mirror.example/debian-security", "bookworm-security"),
    ]
    assert found[0].types == ("deb",) and found[0].components == ("main", "contrib")
    assert found[0].signed_by == KEYRING and found[0].origin == "x.sources"


def test_deb822_field_names_any_case_continuations_and_disabled_paragraphs():
    text = ("types: deb deb-src\nURIS: http://a.example/debian\n  http://b.example/debian\n"
            "suites: bookworm\ncomponents: main\nSigned-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n"
            " xyz\n -----END PGP PUBLIC KEY BLOCK-----\n\n"
            "Enabled: no\nTypes: deb\nURIs: http://off.example/debian\nSuites: bookworm\nComponents: main\n")
    found = apt.parse_deb822(text)
    assert [s.uri for s in found] == ["http://a.example/debian", "http://b.example/debian"]
    assert found[0].types == ("deb", "deb-src") and found[0].signed_by == "(embedded key)"


def test_one_line_entries_with_options_comments_and_tabs():
    text = ("# deb http://commented.example/debian bookworm main\n"
            "deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://a.example/debian bookworm main # tail\n"
            "deb\thttp://b.example/debian\tbookworm\tmain contrib\n"
            "deb-src http://a.example/debian bookworm main\n"
            "deb [ trusted=yes ] file:/srv/repo ./\n")
    found = apt.parse_one_line(text, "sources.list")
    assert [(s.types, s.uri, s.suite, s.components) for s in found] == [
        (("deb",), "http://a.example/debian", "bookworm", ("main",)),
        (("deb",), "http://b.example/debian", "bookworm", ("main", "contrib")),
        (("deb-src",), "http://a.example/debian", "bookworm", ("main",)),
        (("deb",), "file:/srv/repo", "./", ()),
    ]
    assert found[0].signed_by == "/usr/share/keyrings/x.gpg" and found[1].signed_by == ""


def test_one_line_cdrom_uri_with_blanks_in_brackets():
    found = apt.parse_one_line("deb cdrom:[Debian GNU/Linux 12 _Bookworm_ DVD]/ bookworm contrib main\n")
    assert [(s.uri, s.suite, s.components) for s in found] == [
        ("cdrom:[Debian GNU/Linux 12 _Bookworm_ DVD]/", "bookworm", ("contrib", "main"))]


@pytest.mark.parametrize("garbage", [
    "", "deb\n", "deb http://x.example/debian\n", "deb [arch=amd64 http://x.example/debian bookworm main\n",
    "deb cdrom:[unclosed bookworm main\n", "rpm http://x.example/ bookworm main\n", "\x00\xff\n[\n]\n",
    "Types deb\nURIs:\n\n\n:\n  continuation first\n", "deb [] \n", "#\n# only comments\n",
])
def test_garbage_lines_are_skipped_never_an_error(garbage):
    assert apt.parse_one_line(garbage) == []
    assert apt.parse_deb822(garbage) == []


def test_a_huge_paragraph_is_bounded():
    uris = " ".join(f"http://m{i}.example/debian" for i in range(1000))
    suites = " ".join(f"s{i}" for i in range(1000))
    found = apt.parse_deb822(f"Types: deb\nURIs: {uris}\nSuites: {suites}\nComponents: main\n")
    assert len(found) == apt.MAX_PER_FIELD ** 2


# -- reading the tree ------------------------------------------------------------------------------


def test_reads_both_formats_in_apts_order_and_ignores_disabled_files(tmp_path):
    root = make_root(tmp_path, {
        "sources.list": "deb http://first.example/debian bookworm main\n",
        "sources.list.d/b.sources": DEB822,
        "sources.list.d/a.list": "deb http://second.example/debian bookworm main\n",
        "sources.list.d/c.list.disabled": "deb http://off.example/debian bookworm main\n",
        "sources.list.d/d.sources.bak": DEB822.replace("mirror.example", "off.example"),
        "sources.list.d/bad name.list": "deb http://off.example/debian bookworm main\n",
    })
    uris = [s.uri for s in apt.read_sources(root)]
    assert uris[:2] == ["http://first.example/debian", "http://second.example/debian"]
    assert "http://mirror.example/debian" in uris and not any("off.example" in u for u in uris)


def test_the_main_archive_not_security_updates_or_third_party(tmp_path):
    third = "deb [signed-by=/usr/share/keyrings/vendor.gpg] http://vendor.example/apt bookworm main\n"
    root = make_root(tmp_path, {
        "sources.list.d/00-vendor.list": third,
        "sources.list.d/10-other.list": "deb http://other.example/apt nodistro main\n",
        "sources.list.d/debian.sources": DEB822,
    })
    assert apt.host_mirror(root) == apt.Mirror("http://mirror.example/debian", "bookworm",
                                               os.path.join(root, "etc/apt/sources.list.d/debian.sources"))


def test_the_archive_keyring_beats_an_unsigned_entry_listed_first(tmp_path):
    root = make_root(tmp_path, {
        "sources.list.d/00-vendor.list": "deb http://vendor.example/apt bookworm main\n",
        "sources.list.d/debian.sources": DEB822,
    })
    assert apt.host_mirror(root).uri == "http://mirror.example/debian"
    root = make_root(tmp_path / "2", {"sources.list.d/00-vendor.list": "deb http://vendor.example/apt bookworm main\n",
                                      "sources.list.d/debian.sources": DEB822.replace(f"Signed-By: {KEYRING}\n", "")})
    assert apt.host_mirror(root).uri == "http://vendor.example/apt"  # nothing tells them apart: apt's order


def test_needs_main_a_deb_entry_and_a_method_debootstrap_can_fetch(tmp_path):
    root = make_root(tmp_path, {"sources.list": (
        "deb-src http://src.example/debian bookworm main\n"
        "deb http://nomain.example/debian bookworm contrib\n"
        "deb mirror+file:/etc/apt/mirrors.txt bookworm main\n"
        "deb cdrom:[Debian 12]/ bookworm main\n")})
    assert apt.host_mirror(root) is None
    with open(os.path.join(root, "etc/apt/sources.list"), "a") as f:
        f.write("deb https://ok.example/debian bookworm main\n")
    assert apt.host_mirror(root).uri == "https://ok.example/debian"


def test_deb822_enabled_no_is_skipped(tmp_path):
    root = make_root(tmp_path, {"sources.list.d/debian.sources": "Enabled: no\n" + DEB822})
    assert apt.host_mirror(root) is None  # the first paragraph is off; the second is security only


def test_the_host_codename_decides_and_a_debian_mirror_serves_other_releases(tmp_path):
    trixie = DEB822.replace("bookworm", "trixie")
    root = make_root(tmp_path, {"sources.list.d/debian.sources": trixie},
                     os_release='ID=debian\nVERSION_CODENAME="trixie"\n')
    assert apt.host_mirror(root).suite == "trixie"
    origin = os.path.join(root, "etc/apt/sources.list.d/debian.sources")
    assert apt.debian_mirror("bookworm", root) == apt.Mirror("http://mirror.example/debian", "bookworm", origin)


def test_an_ubuntu_mirror_is_never_taken_for_debian(tmp_path):
    root = make_root(tmp_path, {"sources.list": "deb http://mirror.example/ubuntu noble main universe\n"},
                     os_release="ID=ubuntu\nID_LIKE=debian\nVERSION_CODENAME=noble\n")
    assert apt.host_mirror(root) == apt.Mirror("http://mirror.example/ubuntu", "noble",
                                               os.path.join(root, "etc/apt/sources.list"))
    assert apt.debian_mirror("bookworm", root) is None


def test_no_apt_at_all(tmp_path):
    assert apt.read_sources(str(tmp_path)) == []
    assert apt.os_release(str(tmp_path)) == {}
    assert apt.host_mirror(str(tmp_path)) is None


# -- hostile files ------------------------------------------------------------------------------------


def test_symlinks_fifos_directories_and_oversized_files_are_not_read(tmp_path):
    outside = tmp_path / "outside.list"
    outside.write_text("deb http://linked.example/debian bookworm main\n")
    root = make_root(tmp_path, {"sources.list.d/big.list": "#" * apt.MAX_FILE_BYTES
                                + "\ndeb http://big.example/debian bookworm main\n"})
    d = os.path.join(root, "etc/apt/sources.list.d")
    os.symlink(outside, os.path.join(d, "link.list"))
    os.mkfifo(os.path.join(d, "fifo.list"))  # would block a plain open() for ever
    os.mkdir(os.path.join(d, "dir.list"))
    assert apt.read_sources(root) == []
    assert apt.read_text(os.path.join(d, "big.list")) is None
    assert apt.read_text(str(outside)) is not None


def test_a_file_at_the_cap_is_read(tmp_path):
    line = "deb http://edge.example/debian bookworm main\n"
    root = make_root(tmp_path, {"sources.list": "#" * (apt.MAX_FILE_BYTES - len(line) - 1) + "\n" + line})
    assert apt.host_mirror(root).uri == "http://edge.example/debian"


def test_os_release_is_read_from_usr_lib_when_etc_is_a_symlink(tmp_path):
    text = '# c\nID=debian\nVERSION_CODENAME=bookworm\nPRETTY_NAME="Debian 12"\nbad\n'
    root = make_root(tmp_path, {}, os_release=text)
    assert apt.os_release(root) == {"ID": "debian", "VERSION_CODENAME": "bookworm", "PRETTY_NAME": "Debian 12"}


# -- where the builder uses it -----------------------------------------------------------------------


def test_a_debootstrap_recipe_without_mirrorurl_suggests_the_hosts_own():
    with pytest.raises(BuildError) as e:
        deffile.parse("Bootstrap: debootstrap\nOSVersion: bookworm\n", filename="d.def")
    host = apt.host_mirror()
    expected = (f"MirrorURL: {host.uri}, this host's apt source" if host
                else "MirrorURL: http://<your Debian mirror>/debian")
    assert str(e.value) == f"d.def:1: Bootstrap: debootstrap needs a MirrorURL: header (for example {expected})"
