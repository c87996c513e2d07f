"""Download progress: one live line per blob plus a total on a terminal, plain lines otherwise.

Standard library only: drawing a few lines with ``\\r`` and ANSI cursor moves
needs no dependency, and the lines stay readable in a batch job's log.
"""

from __future__ import annotations

import sys
import threading
import time


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
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.lock = threading.Lock()
        self.blobs: dict[str, list[int]] = {}
        self.order: list[str] = []
        self.drawn = 0
        self.last = 0.0

    def start(self, digest: str, total: int) -> None:
        with self.lock:
            self.blobs[digest] = [0, int(total)]
            self.order.append(digest)
            if not self.quiet and not self.tty:
                self.stream.write(f"yurt: fetching {digest[:19]} ({_human(total)})\n")
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
            self._draw(final=not any(d < t for d, t in self.blobs.values()))

    def message(self, text: str) -> None:
        if not self.quiet:
            with self.lock:
                self.stream.write(f"yurt: {text}\n")
                self.drawn = 0

    def _draw(self, final: bool = False) -> None:
        if self.quiet or not self.tty:
            return
        out = []
        if self.drawn:
            out.append(f"\x1b[{self.drawn}F")
        done_all = sum(d for d, _ in self.blobs.values())
        total_all = sum(t for _, t in self.blobs.values()) or 1
        lines = []
        for digest in self.order:
            done, total = self.blobs[digest]
            lines.append(f"{digest[7:19]}  {_bar(done, total)}  {_human(done)}/{_human(total)}")
        lines.append(f"{'total':<12}  {_bar(done_all, total_all)}  {_human(done_all)}/{_human(total_all)}")
        out.extend("\x1b[2K" + line + "\n" for line in lines)
        self.stream.write("".join(out))
        self.stream.flush()
        self.drawn = len(lines)
        if final:
            self.drawn = 0


def _bar(done: int, total: int, width: int = 24) -> str:
    frac = min(1.0, done / total) if total else 1.0
    filled = int(frac * width)
    return "[" + "#" * filled + "." * (width - filled) + f"] {frac * 100:5.1f}%"
