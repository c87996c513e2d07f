"""parse_reference: Docker's defaults, hosts and ports, tags and digests, and what the spec refuses."""

from __future__ import annotations

import pytest

from yurt.errors import UsageError
from yurt.registry.reference import Reference, is_digest, parse_reference, validate_digest

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        # Docker Hub short names, like `docker pull`
        ("busybox", "registry-1.docker.io", "library/busybox", "latest", None),
        ("docker://busybox", "registry-1.docker.io", "library/busybox", "latest", None),
        ("docker://busybox:1.36", "registry-1.docker.io", "library/busybox", "1.36", None),
        ("docker://user/img:tag", "registry-1.docker.io", "user/img", "tag", None),
        ("docker://docker.io/busybox", "registry-1.docker.io", "library/busybox", "latest", None),
        ("docker://index.docker.io/library/alpine:3", "registry-1.docker.io", "library/alpine", "3", None),
        ("docker://docker.io/user/img", "registry-1.docker.io", "user/img", "latest", None),
        # hosts: a '.' or a ':' or localhost
        ("docker://127.0.0.1:5000/repo:tag", "127.0.0.1:5000", "repo", "tag", None),
        ("docker://localhost/repo", "localhost", "repo", "latest", None),
        ("docker://localhost:5000/a/b/c:v1.2-rc_3", "localhost:5000", "a/b/c", "v1.2-rc_3", None),
        ("ghcr.io/owner/img:1", "ghcr.io", "owner/img", "1", None),
        ("quay.io/org/img", "quay.io", "org/img", "latest", None),
        ("Registry.Example.COM:443/img", "Registry.Example.COM:443", "img", "latest", None),
        ("[::1]:5000/img:t", "[::1]:5000", "img", "t", None),
        ("myhost:5000/img", "myhost:5000", "img", "latest", None),
        # digests (a digest wins over a tag, which is kept)
        (f"docker://127.0.0.1:5000/repo@{D}", "127.0.0.1:5000", "repo", None, D),
        (f"busybox@{D}", "registry-1.docker.io", "library/busybox", None, D),
        (f"docker://h.io/r:t@{D}", "h.io", "r", "t", D),
        # separators the spec allows in names
        ("h.io/a.b/c_d/e__f/g-h/i--j", "h.io", "a.b/c_d/e__f/g-h/i--j", "latest", None),
        ("h.io/r:_underscore.Tag-1", "h.io", "r", "_underscore.Tag-1", None),
    ],
)
def test_valid(text, registry, repository, tag, digest):
    ref = parse_reference(text)
    assert (ref.transport, ref.registry, ref.repository, ref.tag, ref.digest) == (
        "docker", registry, repository, tag, digest)


def test_ref_and_str():
    ref = parse_reference("docker://127.0.0.1:5000/repo:tag")
    assert ref.ref == "tag"
    assert str(ref) == "docker://127.0.0.1:5000/repo:tag"
    assert ref.name == "127.0.0.1:5000/repo"
    ref = parse_reference(f"h.io/r:t@{D}")
    assert ref.ref == D
    assert str(ref) == f"docker://h.io/r:t@{D}"
    assert str(parse_reference("busybox")) == "docker://registry-1.docker.io/library/busybox:latest"
    assert parse_reference(str(parse_reference("busybox:1"))) == parse_reference("busybox:1")


def test_oras():
    ref = parse_reference("oras://127.0.0.1:5000/sif/img:v1")
    assert ref == Reference(transport="oras", registry="127.0.0.1:5000", repository="sif/img", tag="v1", digest=None)
    assert str(ref) == "oras://127.0.0.1:5000/sif/img:v1"
    with pytest.raises(UsageError, match="name the registry"):
        parse_reference("oras://img:v1")


def test_tag_of_128_characters():
    assert parse_reference("h.io/r:" + "a" * 128).tag == "a" * 128
    with pytest.raises(UsageError, match="invalid tag"):
        parse_reference("h.io/r:" + "a" * 129)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty image reference"),
        ("   ", "empty image reference"),
        ("docker://", "no repository"),
        ("docker://h.io/", "no repository"),
        ("http://h.io/repo", "unsupported transport 'http://'"),
        ("library/BusyBox", "must be lower case"),
        ("h.io/Repo:tag", "must be lower case"),
        ("h.io/re..po", "invalid repository name"),
        ("h.io/-repo", "invalid repository name"),
        ("h.io/repo-", "invalid repository name"),
        ("h.io/a//b", "invalid repository name"),
        ("h.io/a___b", "invalid repository name"),
        ("h.io/repo:-tag", "invalid tag '-tag'"),
        ("h.io/repo:", "invalid tag ''"),
        ("h.io/repo:t@g", "invalid digest 'g'"),
        ("h.io/repo@sha256:abc", "sha256 needs 64 lower-case hex digits"),
        ("h.io/repo@sha256:" + "AB" * 32, "sha256 needs 64 lower-case hex digits"),
        ("h.io/repo@md5:" + "ab" * 16, "unsupported digest algorithm 'md5'"),
        ("h.io/repo@latest", "invalid digest 'latest'"),
        ("bad_host.io/repo", "invalid registry host 'bad_host.io'"),
        ("h.io:99999/repo", "invalid port 99999"),
        ("h.io:0/repo", "invalid port 0"),
        ("busy box", "white space"),
        ("h.io/" + "a" * 256, "longer than 255 characters"),
    ],
)
def test_invalid(text, message):
    with pytest.raises(UsageError) as info:
        parse_reference(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_digest_helpers():
    assert validate_digest(D) == D
    assert validate_digest("sha512:" + "0" * 128)
    assert is_digest(D) and not is_digest("latest") and not is_digest("v1.0")
    with pytest.raises(UsageError, match="sha512 needs 128"):
        validate_digest("sha512:" + "0" * 64)


# resolve_platform lives with the client (it imports httpx), but is pure: test it here too.
def _index(*platforms):
    manifests = []
    for n, platform in enumerate(platforms):
        desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": f"sha256:{n:064x}", "size": 1}
        if platform is not None:
            desc["platform"] = platform
        manifests.append(desc)
    return {"schemaVersion": 2, "manifests": manifests}


def test_resolve_platform():
    from yurt.errors import ImageError
    from yurt.registry import platforms

    index = _index({"os": "linux", "architecture": "amd64"},
                   {"os": "linux", "architecture": "arm64", "variant": "v8"},
                   {"os": "linux", "architecture": "arm", "variant": "v6"},
                   {"os": "linux", "architecture": "arm", "variant": "v7"},
                   {"os": "unknown", "architecture": "unknown"})
    digest = [m["digest"] for m in index["manifests"]]
    assert platforms.resolve_platform(index, arch="amd64")["digest"] == digest[0]
    assert platforms.resolve_platform(index, arch="arm64")["digest"] == digest[1]
    assert platforms.resolve_platform(index, arch="arm", variant="v7")["digest"] == digest[3]
    assert platforms.resolve_platform(index, arch="arm")["digest"] == digest[2]  # first when no preference
    host_os, host_arch, _ = platforms.host_platform()
    assert host_os == "linux" and host_arch and host_arch not in ("x86_64", "aarch64")
    with pytest.raises(ImageError) as info:
        platforms.resolve_platform(index, arch="s390x")
    assert str(info.value) == ("the image has no linux/s390x variant; it has: linux/amd64, linux/arm64/v8, "
                               "linux/arm/v6, linux/arm/v7 (choose one with --arch)")
    with pytest.raises(ImageError, match="no linux/arm/v5 variant"):
        platforms.resolve_platform(index, arch="arm", variant="v5")
    # an arm64 entry without a variant is v8
    plain = _index({"os": "linux", "architecture": "arm64"})
    assert platforms.resolve_platform(plain, arch="arm64", variant="v8")["digest"] == plain["manifests"][0]["digest"]
    with pytest.raises(ImageError, match="no 'manifests' list"):
        platforms.resolve_platform({"schemaVersion": 2})
