"""A tiny dependency-free progress line on stderr.

Shown only when the stream is a terminal, or when forced (enabled=True, or NPBERT_PROGRESS=1 in the
environment); NPBERT_PROGRESS=0 turns it off everywhere. Redraws at most every `interval` seconds.

    with Progress(total=len(rows), desc="fp32 mrpc") as bar:
        for chunk in chunks:
            ...
            bar.update(len(chunk))
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO


def progress_enabled(stream: TextIO | None = None) -> bool:
    """The automatic decision: NPBERT_PROGRESS if set, else whether `stream` (stderr) is a terminal."""
    stream = sys.stderr if stream is None else stream
    env = os.environ.get("NPBERT_PROGRESS", "").strip().lower()
    if env in ("1", "true", "yes", "always"):
        return True
    if env in ("0", "false", "no", "never"):
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def _fmt_time(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class Progress:
    """`desc  42% |########          | 210/500 [00:03<00:04, 61.2/s]`, redrawn in place with \\r."""

    def __init__(
        self,
        total: int,
        desc: str = "",
        enabled: bool | None = None,
        stream: TextIO | None = None,
        width: int = 24,
        interval: float = 0.2,
        unit: str = "ex",
    ):
        self.stream = stream if stream is not None else sys.stderr
        self.total = max(int(total), 0)
        self.desc = desc
        self.enabled = progress_enabled(self.stream) if enabled is None else bool(enabled)
        self.width = width
        self.interval = interval
        self.unit = unit
        self.n = 0
        self.start = time.perf_counter()
        self._last_draw = -1.0
        self._last_len = 0
        self._closed = False

    def line(self) -> str:
        el = time.perf_counter() - self.start
        rate = self.n / el if el > 0 else 0.0
        frac = min(self.n / self.total, 1.0) if self.total else 1.0
        fill = int(round(frac * self.width))
        bar = "#" * fill + " " * (self.width - fill)
        eta = (self.total - self.n) / rate if rate > 0 and self.total else 0.0
        head = f"{self.desc}  " if self.desc else ""
        return (
            f"{head}{frac * 100:3.0f}% |{bar}| {self.n}/{self.total} "
            f"[{_fmt_time(el)}<{_fmt_time(eta)}, {rate:.1f} {self.unit}/s]"
        )

    def _draw(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last_draw < self.interval:
            return
        self._last_draw = now
        text = self.line()
        pad = " " * max(self._last_len - len(text), 0)
        self._last_len = len(text)
        try:
            self.stream.write("\r" + text + pad)
            self.stream.flush()
        except (OSError, ValueError):  # a closed pipe must not kill an evaluation
            self.enabled = False

    def update(self, k: int = 1) -> None:
        self.n += int(k)
        if self.enabled and not self._closed:
            self._draw(force=self.n >= self.total)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.enabled:
            self._draw(force=True)
            try:
                self.stream.write("\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass

    def __enter__(self) -> "Progress":
        if self.enabled:
            self._draw(force=True)
        return self

    def __exit__(self, *exc) -> None:
        self.close()
