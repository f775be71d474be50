"""A tiny progress line on stderr, only when stderr is a terminal (no dependency needed)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, enabled: bool | None = None, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.label = ""
        self.done = 0
        self._start = time.monotonic()
        self._last = 0.0

    def stage(self, label: str) -> None:
        self.label = label
        self._draw(force=True)

    def advance(self, n: int) -> None:
        self.done += n
        self._draw()

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        rate = self.done / max(now - self._start, 1e-6) / (1 << 20)
        line = f"{self.label}  {self.done / (1 << 20):,.1f} MiB  {rate:,.0f} MiB/s"
        self.stream.write("\r\x1b[K" + line[:120])
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
