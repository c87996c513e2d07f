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
    if values["help"] or not positionals:
        print(usage(command, *SYNOPSIS, FLAGS))
        return 0 if values["help"] else 255
    from yurt.registry import auth

    action, rest = positionals[0], positionals[1:]
    if action == "list":
        for host, user in auth.list_logins():
            print(f"{host}\t{user}")
        return 0
    if len(rest) != 1:
        raise UsageError(f"registry {action} needs a HOST")
    host = rest[0].split("://", 1)[-1].rstrip("/")
    if action == "logout":
        auth.remove_login(host)
        print(f"yurt: removed the credentials for {host}")
        return 0
    if action != "login":
        raise UsageError(f"unknown registry action {action!r}", "use login, logout or list")
    user = values["username"] or input("Username: ")
    if values["password_stdin"]:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
    if not user or not password:
        raise UsageError("a user name and a password are needed")
    from yurt.registry.client import RegistryClient

    client = RegistryClient(host, insecure=values["insecure"], ca_file=values["ca_file"],
                            credentials=(user, password))
    client.check_login()
    auth.save_login(host, user, password)
    print(f"yurt: logged in to {host}")
    return 0
