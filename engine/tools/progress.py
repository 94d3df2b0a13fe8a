"""Plain progress reports for long work (demo loading, ``bench kv``, ``check``).

On a terminal one line is redrawn in place (``\\r``) at most ``REDRAW_PER_SECOND`` times a
second; otherwise (a pipe, a test's captured stream) nothing is written until ``close()``,
which prints one summary line, so logs stay short. No third-party progress bar: this is
all three commands need.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]

REDRAW_PER_SECOND = 10       # terminal redraws; more only costs time in the loop being timed


class Progress:
    """``with Progress("loading", total=n) as p: ... p.advance(k)``."""

    def __init__(self, label: str, total: int, *, unit: str = "items",
                 stream: TextIO | None = None, enabled: bool = True) -> None:
        if total < 0:
            raise ValueError(f"total must be >= 0, got {total}")
        self.label = label
        self.total = total
        self.unit = unit
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self._tty = enabled and getattr(self.stream, "isatty", lambda: False)()
        self._start = time.perf_counter()
        self._last_draw = 0.0

    def advance(self, n: int = 1) -> None:
        self.done += n
        if not self._tty:
            return
        now = time.perf_counter()
        if now - self._last_draw >= 1 / REDRAW_PER_SECOND or self.done >= self.total:
            self._last_draw = now
            self._draw(now, end="")

    def _draw(self, now: float, end: str) -> None:
        elapsed = max(now - self._start, 1e-9)
        share = self.done / self.total if self.total else 1.0
        width = 24
        bar = "#" * int(share * width)
        self.stream.write(f"\r{self.label}: [{bar:<{width}}] {share:>4.0%} "
                          f"{self.done:,}/{self.total:,} {self.unit} "
                          f"({self.done / elapsed:,.0f}/s, {elapsed:.1f} s){end}")
        self.stream.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._tty:
            self._draw(now, end="\n")
        else:
            elapsed = max(now - self._start, 1e-9)
            self.stream.write(f"{self.label}: {self.done:,} {self.unit} in {elapsed:.1f} s "
                              f"({self.done / elapsed:,.0f}/s)\n")
            self.stream.flush()
        self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
