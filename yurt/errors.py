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


# --- the Python API's error channel -------------------------------------------------------------
#
# yurt.api runs yurt in a child process and raises the exception the command line reported, of the same
# class.  The one line on stderr does not say the class (an ImageError and a PolicyError both read
# "yurt: error: ..."), so the API hands the child a memfd whose number is in YURT_API_ERROR_FD; the child
# takes it out of its environment at start (the container never sees it, and it is close-on-exec, so no
# payload inherits it) and, where it prints its error line, appends one record there:
# ``module:qualname NUL exit-code NUL message NUL hint LF``.  The file is checked to be the one handed in
# (fstat: a regular file with the same device and inode) before each write, so a number the runtime
# closed and reused is never written to.  Nothing is imported: this also runs after pivot_root.

API_ERROR_FD = "YURT_API_ERROR_FD"
_api_channel: tuple[int, int, int] | None = None


def open_api_channel() -> None:
    """Take the API's error file out of the environment (the CLI calls this first; one lookup otherwise)."""
    import os

    global _api_channel
    raw = os.environ.pop(API_ERROR_FD, None)
    if raw is None or not (raw.isascii() and raw.isdigit()):
        return
    fd = int(raw)
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o170000 != 0o100000:  # S_IFREG, without importing stat
            return
        os.set_inheritable(fd, False)
    except (OSError, OverflowError):
        return
    _api_channel = (fd, st.st_dev, st.st_ino)


def tell_api(error: YurtError) -> None:
    """One record of ``error`` for the API that started this yurt, if one did (see above)."""
    if _api_channel is None:
        return
    import os

    fd, dev, ino = _api_channel
    cls = type(error)
    fields = (f"{cls.__module__}:{cls.__qualname__}", str(error.exit_code), one_line(error.message)[:2000],
              one_line(error.hint or "")[:1000])
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (dev, ino):
            return
        os.write(fd, ("\0".join(f.replace("\0", " ") for f in fields) + "\n").encode("utf-8", "surrogateescape"))
    except OSError:
        pass
