"""Generated /etc/passwd and /etc/group contents."""

from __future__ import annotations

from yurt.runtime.passwd import MAX_SIZE, group_with_user, passwd_with_user

USER = {"name": "alice", "uid": 1000, "gid": 1000, "gecos": "Alice A", "home": "/home/alice",
        "shell": "/bin/bash"}
ENTRY = "alice:x:1000:1000:Alice A:/home/alice:/bin/bash"


def pw(image: bytes | None, **kw) -> list[str]:
    out = passwd_with_user(image, **{**USER, **kw})
    assert out.endswith(b"\n")
    return out.decode().splitlines()


def gr(image: bytes | None, **kw) -> list[str]:
    args = {"name": "alice", "gid": 1000, "group_name": "alice", **kw}
    out = group_with_user(image, **args)
    assert out.endswith(b"\n")
    return out.decode().splitlines()


IMAGE_PASSWD = b"root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n"


def test_no_image_passwd():
    assert pw(None) == [ENTRY]
    assert pw(b"") == [ENTRY]


def test_entry_appended():
    assert pw(IMAGE_PASSWD) == ["root:x:0:0:root:/root:/bin/sh", "daemon:x:1:1::/usr/sbin:/usr/sbin/nologin",
                                ENTRY]


def test_existing_uid_replaced():
    image = IMAGE_PASSWD + b"ubuntu:x:1000:1000:Ubuntu:/home/ubuntu:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"
    lines = pw(image)
    assert not any(line.startswith("ubuntu:") for line in lines)
    assert lines[-1] == ENTRY
    assert "nobody:x:65534:65534::/:/bin/false" in lines
    assert sum(1 for line in lines if line.split(":")[2:3] == ["1000"]) == 1


def test_existing_name_replaced():
    lines = pw(IMAGE_PASSWD + b"alice:x:500:500::/old:/bin/sh\n")
    assert [line for line in lines if line.startswith("alice:")] == [ENTRY]


def test_root_entry_replaced_for_uid_0():
    lines = pw(IMAGE_PASSWD, name="root", uid=0, gid=0, gecos="", home="/root", shell="/bin/bash")
    assert [line for line in lines if line.split(":")[2:3] == ["0"]] == ["root:x:0:0::/root:/bin/bash"]
    assert lines[-1] == "root:x:0:0::/root:/bin/bash"


def test_gecos_colon_sanitised():
    lines = pw(None, gecos="A:B:C")
    assert lines == ["alice:x:1000:1000:A B C:/home/alice:/bin/bash"]
    assert len(lines[0].split(":")) == 7


def test_garbage_lines_survive():
    image = b"# comment\n\ngarbage\nshort:x\n+::::::\nroot:x:0:0:root:/root:/bin/sh\n"
    lines = pw(image)
    assert lines[:-1] == ["# comment", "", "garbage", "short:x", "+::::::", "root:x:0:0:root:/root:/bin/sh"]
    assert lines[-1] == ENTRY


def test_invalid_utf8_survives():
    lines = pw(b"caf\xe9:x:5:5::/:/bin/sh\n")
    assert lines[0].startswith("caf") and lines[0].endswith(":x:5:5::/:/bin/sh")
    assert lines[-1] == ENTRY


def test_no_trailing_newline_in_image():
    assert pw(b"root:x:0:0::/root:/bin/sh") == ["root:x:0:0::/root:/bin/sh", ENTRY]


def test_huge_passwd_capped():
    line = b"user:x:5:5::/home/user:/bin/sh\n"
    image = line * ((3 * MAX_SIZE) // len(line))
    out = passwd_with_user(image, **USER)
    assert len(out) <= MAX_SIZE + len(ENTRY) + 2
    assert out.decode().splitlines()[-1] == ENTRY


# ------------------------------------------------------------------ group

IMAGE_GROUP = b"root:x:0:\nusers:x:100:bob\nalice:x:1000:\n"


def test_group_ids_that_only_look_like_digits():
    """"\u00b2".isdigit() is true but int() refuses it: such a line is kept, not a crash."""
    image = "odd:x:\u00b2:\nalice:x:1000:\n".encode()
    assert gr(image) == ["odd:x:\u00b2:", "alice:x:1000:alice"]


def test_no_image_group():
    assert gr(None) == ["alice:x:1000:alice"]


def test_membership_added_to_existing_group():
    assert gr(IMAGE_GROUP) == ["root:x:0:", "users:x:100:bob", "alice:x:1000:alice"]


def test_membership_appended_to_existing_members():
    lines = gr(b"root:x:0:\ndev:x:1000:bob,carol\n", group_name="dev")
    assert lines == ["root:x:0:", "dev:x:1000:bob,carol,alice"]


def test_membership_not_duplicated():
    assert gr(b"dev:x:1000:alice,bob\n") == ["dev:x:1000:alice,bob"]


def test_missing_group_created():
    assert gr(b"root:x:0:\n") == ["root:x:0:", "alice:x:1000:alice"]


def test_extra_groups():
    lines = gr(IMAGE_GROUP, extra={100: "users", 2000: "hpc"})
    assert lines == ["root:x:0:", "users:x:100:bob,alice", "alice:x:1000:alice", "hpc:x:2000:alice"]


def test_group_garbage_lines_survive():
    image = b"# comment\ngarbage\nbad:x:notanumber:alice\nshort:x:1000\n\nroot:x:0:\n"
    lines = gr(image)
    assert lines[:-1] == ["# comment", "garbage", "bad:x:notanumber:alice", "short:x:1000", "", "root:x:0:"]
    assert lines[-1] == "alice:x:1000:alice"


def test_only_first_group_with_gid_updated():
    lines = gr(b"a:x:1000:\nb:x:1000:\n")
    assert lines == ["a:x:1000:alice", "b:x:1000:"]


def test_huge_group_capped():
    line = b"g:x:7:bob\n"
    image = line * ((3 * MAX_SIZE) // len(line))
    out = group_with_user(image, name="alice", gid=1000, group_name="alice")
    assert len(out) <= MAX_SIZE + 64
    assert out.decode().splitlines()[-1] == "alice:x:1000:alice"
