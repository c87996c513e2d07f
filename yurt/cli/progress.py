"""Download progress: rich bars (one per blob, and a total) on a terminal, plain lines otherwise.

On a terminal (:mod:`yurt.cli.terminal`) the bars are rich's, drawn on stderr;
rich is imported at the first blob, so a pull that downloads nothing (or
``yurt exec`` of a cached image) never loads it.  The bars refresh from the
download threads' callbacks (at most ten times a second), not from a thread of
their own, and stop when the last blob is done: nothing of rich runs once the
container starts.  Elsewhere each blob is one ``yurt: fetching DIGEST (SIZE)``
line, readable in a batch job's log; ``--quiet`` prints nothing.
"""

from __future__ import annotations

import atexit
import sys
import threading
import time
from typing import Any

from yurt.cli.terminal import is_terminal, rich_console


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


class Progress:
    """Callbacks for the puller: ``start``, ``update``, ``finish`` per blob (thread-safe)."""

    def __init__(self, stream=None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = is_terminal(self.stream)
        self.lock = threading.Lock()
        self.blobs: dict[str, list[int]] = {}
        self.last = 0.0
        self.bars: Any = None  # rich.progress.Progress while blobs are downloading on a terminal
        self.tasks: dict[str, Any] = {}  # digest -> rich task id; "" -> the total

    def start(self, digest: str, total: int) -> None:
        with self.lock:
            self.blobs[digest] = [0, int(total)]
            if self.quiet:
                return
            if not self.tty:
                self.stream.write(f"yurt: fetching {digest[:19]} ({_human(total)})\n")
                return
            if self.bars is None:
                self._open()
            self.tasks[digest] = self.bars.add_task(digest[7:19], total=int(total) or None)
            self.bars.remove_task(self.tasks[""])  # the total stays the last line
            self.tasks[""] = self.bars.add_task("total", total=None)
            self._draw()

    def update(self, digest: str, done: int, total: int) -> None:
        with self.lock:
            self.blobs[digest] = [int(done), int(total)]
            now = time.monotonic()
            if now - self.last > 0.1:
                self.last = now
                self._draw()

    def finish(self, digest: str) -> None:
        with self.lock:
            if digest in self.blobs:
                self.blobs[digest][0] = self.blobs[digest][1]
            self._draw()
            if self.bars is not None and not any(d < t for d, t in self.blobs.values()):
                self._close()

    def message(self, text: str) -> None:
        if not self.quiet:
            with self.lock:
                if self.bars is not None:
                    from rich.text import Text

                    self.bars.console.print(Text(f"yurt: {text}"))
                else:
                    self.stream.write(f"yurt: {text}\n")

    def _open(self) -> None:
        from rich import progress as rp

        self.bars = rp.Progress(rp.TextColumn("{task.description:<12}"), rp.BarColumn(),
                                rp.DownloadColumn(binary_units=True), rp.TransferSpeedColumn(),
                                rp.TimeRemainingColumn(), console=rich_console(self.stream), auto_refresh=False,
                                redirect_stdout=False, redirect_stderr=False)
        self.tasks = {"": self.bars.add_task("total", total=None)}
        self.bars.start()
        atexit.register(self._close)  # a failed or interrupted pull: leave the terminal as it was (cursor shown)

    def _close(self) -> None:
        """Stop the bars (their last frame stays on the screen)."""
        atexit.unregister(self._close)
        if self.bars is not None:
            self.bars.stop()
        self.bars = None
        self.tasks = {}
        self.blobs = {}

    def _draw(self) -> None:
        if self.bars is None:
            return
        for digest, (done, total) in self.blobs.items():
            if digest in self.tasks:
                self.bars.update(self.tasks[digest], completed=done, total=total or None)
        self.bars.update(self.tasks[""], completed=sum(d for d, _ in self.blobs.values()),
                         total=sum(t for _, t in self.blobs.values()) or None)
        self.bars.refresh()
