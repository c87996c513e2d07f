"""One error hierarchy for the whole project.

The CLI catches :class:`YurtError`, prints ``yurt: error: <message>`` on one
line and exits with :attr:`YurtError.exit_code`.  Anything else is a bug and
gets a traceback only with ``--debug``.
"""

from __future__ import annotations


class YurtError(Exception):
    """A failure yurt can explain in one line (exit code 255 by default)."""

    exit_code = 255

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(YurtError):
    """The command line itself is wrong (unknown flag, missing argument)."""


class ImageError(YurtError):
    """An image is missing, unreadable, malformed or hostile."""


class RuntimeSetupError(YurtError):
    """The container could not be set up (namespaces, mounts, id maps)."""


class PayloadNotFound(YurtError):
    """The program to run does not exist in the container (like a shell's 127)."""

    exit_code = 127


class PayloadNotExecutable(YurtError):
    """The program exists but cannot be executed (like a shell's 126)."""

    exit_code = 126


class BuildError(YurtError):
    """An image build failed."""


class Interrupted(YurtError):
    """Ctrl-C (SIGINT) or SIGTERM stopped the command after it cleaned up.

    The exit status is the shell's for death by that signal (130, 143), as for any
    interrupted command; not a BuildError, which steps catch and report as their own failure.
    """

    def __init__(self, message: str, signum: int = 2) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class ConfigError(YurtError):
    """A configuration file (``/etc/yurt/yurt.toml``, ``~/.config/yurt/config.toml``) is unreadable or wrong."""


class PolicyError(YurtError):
    """The site's policy (``/etc/yurt/yurt.toml``) forbids what was asked."""


def os_error_text(e: OSError) -> str:
    """``Permission denied: /scratch/ovl/upper``: an OS error's reason and the path(s) it was about,
    never the bare reason (which leaves the user guessing which of a dozen paths failed)."""
    import os

    text = e.strerror or str(e)
    if e.filename is not None:
        text += f": {os.fsdecode(e.filename)}"
        if e.filename2 is not None:
            text += f" -> {os.fsdecode(e.filename2)}"
    return text


def one_line(text: str) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\x1b``...): a message quoting a user's
    argument, a file name or an image's field stays one line and cannot drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def warn(message: str) -> None:
    """One ``yurt: warning:`` line on stderr: something was not done as asked, and the run goes on."""
    import sys

    sys.stderr.write(f"yurt: warning: {one_line(message)}\n")
