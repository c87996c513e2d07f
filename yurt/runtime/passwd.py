"""Generated ``/etc/passwd`` and ``/etc/group``: the image's, plus the user.

Programs inside (``id``, ``whoami``, ssh, Python's ``getpass``) look the
user up by uid; Apptainer appends an entry for the calling user with the
container home, and so do we.  An existing entry for the same uid is
replaced so the home directory and shell are right.
"""

from __future__ import annotations

MAX_SIZE = 4 << 20


def _lines(text: bytes | None) -> list[str]:
    if not text:
        return []
    return text[:MAX_SIZE].decode("utf-8", "replace").splitlines()


def passwd_with_user(image_passwd: bytes | None, *, name: str, uid: int, gid: int, gecos: str,
                     home: str, shell: str) -> bytes:
    out = []
    for line in _lines(image_passwd):
        fields = line.split(":")
        if len(fields) >= 3 and (fields[2] == str(uid) or fields[0] == name):
            continue
        out.append(line)
    out.append(":".join([name, "x", str(uid), str(gid), gecos.replace(":", " "), home, shell]))
    return ("\n".join(out) + "\n").encode()


def group_with_user(image_group: bytes | None, *, name: str, gid: int, group_name: str,
                    extra: dict[int, str] | None = None) -> bytes:
    """Keep the image's groups; make sure the user's groups exist and list the user."""
    wanted = {gid: group_name, **(extra or {})}
    out = []
    for line in _lines(image_group):
        fields = line.split(":")
        if len(fields) >= 4 and fields[2].isascii() and fields[2].isdigit() and int(fields[2]) in wanted:
            members = [m for m in fields[3].split(",") if m]
            if name not in members:
                members.append(name)
            fields[3] = ",".join(members)
            wanted.pop(int(fields[2]))
            line = ":".join(fields)
        out.append(line)
    for g, gname in wanted.items():
        out.append(f"{gname}:x:{g}:{name}")
    return ("\n".join(out) + "\n").encode()
