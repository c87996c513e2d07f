"""``yurt registry login|logout|list``: credentials for OCI registries (stored 0600)."""

from __future__ import annotations

import getpass
import sys

from yurt.cli.options import Flag, parse, usage
from yurt.errors import UsageError

FLAGS = [
    Flag("username", "value", "u", "user name", "USER"),
    Flag("password-stdin", help="read the password from standard input"),
    Flag("insecure", help="plain HTTP or unverified TLS for this registry"),
    Flag("ca-file", "value", None, "CA certificate file for the registry's TLS", "FILE"),
    Flag("help", short="h", help="show this help"),
]
SYNOPSIS = ("login|logout|list [options] [HOST]",
            "Store, remove or list registry credentials (~/.config/yurt/auth.json, mode 0600).")


def main(command: str, argv: list[str], ctx) -> int:
    values, positionals = parse(argv, FLAGS, stop_at_positional=False)
    if values["help"]:
        print(usage(command, *SYNOPSIS, FLAGS))
        return 0
    if not positionals:
        raise UsageError("registry needs an action: login, logout or list", f"yurt registry {SYNOPSIS[0]}")
    action, rest = positionals[0], positionals[1:]
    if action not in ("login", "logout", "list"):
        raise UsageError(f"unknown registry action {action!r}", "use login, logout or list")
    from yurt.registry import auth

    if action == "list":
        if rest:
            raise UsageError(f"unexpected argument {rest[0]!r}", "yurt registry list")
        for host, user in auth.list_logins():
            print(f"{host}\t{user}")
        return 0
    if len(rest) != 1:
        raise UsageError(f"registry {action} needs one HOST", f"yurt registry {action} [options] HOST")
    host = rest[0].split("://", 1)[-1].rstrip("/")
    if not host:
        raise UsageError(f"no registry host in {rest[0]!r}", f"yurt registry {action} [options] HOST")
    if action == "logout":
        auth.remove_login(host)
        print(f"yurt: removed the credentials for {host}")
        return 0
    user, password = _credentials(values)
    from yurt.registry.client import RegistryClient

    client = RegistryClient(host, insecure=values["insecure"], ca_file=values["ca_file"],
                            credentials=(user, password))
    client.check_login()
    auth.save_login(host, user, password)
    print(f"yurt: logged in to {host}")
    return 0


def _credentials(values: dict) -> tuple[str, str]:
    """User name and password: from the options and standard input, or asked on the terminal.

    As ``docker login``: no prompt when standard input is not a terminal (a job script would
    hang or read its own input), and ``--password-stdin`` needs ``--username``.
    """
    user = values["username"]
    if values["password_stdin"]:
        if not user:  # stdin holds the password: the user name cannot come from it too
            raise UsageError("--password-stdin needs --username", "yurt registry login -u USER --password-stdin HOST")
        password = _stdin_password()
    elif sys.stdin is None or not sys.stdin.isatty():
        raise UsageError("cannot ask for the password: standard input is not a terminal",
                         "pass --username USER and the password on standard input with --password-stdin")
    else:
        try:
            user = user or input("Username: ")
            password = getpass.getpass("Password: ")
        except (EOFError, UnicodeDecodeError):
            raise UsageError("no user name or password could be read from the terminal",
                             "give --username and pipe the password in with --password-stdin")
    if not user or not password:
        raise UsageError("a user name and a password are needed")
    return user, password


PASSWORD_LIMIT = 64 << 10


def _stdin_password() -> str:
    """All of standard input less its final line end (as ``docker login --password-stdin``), checked:
    empty, not UTF-8, a NUL byte or several lines is one clear UsageError instead of a bad login."""
    hint = 'pipe the password or token in: echo "$TOKEN" | yurt registry login -u USER --password-stdin HOST'
    if sys.stdin is None:  # started with standard input closed
        raise UsageError("--password-stdin: there is no standard input", hint)
    try:
        data = sys.stdin.buffer.read(PASSWORD_LIMIT + 1)
    except OSError as e:
        raise UsageError(f"--password-stdin: cannot read standard input: {e.strerror}", hint)
    if len(data) > PASSWORD_LIMIT:
        raise UsageError(f"--password-stdin: standard input is larger than {PASSWORD_LIMIT} bytes", hint)
    data = data.removesuffix(b"\n").removesuffix(b"\r")
    if not data:
        raise UsageError("--password-stdin: standard input is empty", hint)
    try:
        password = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError("--password-stdin: the password is not UTF-8 text", hint)
    if "\0" in password or "\n" in password or "\r" in password:
        raise UsageError("--password-stdin: the password holds a NUL byte or a line break", hint)
    return password
