"""Wall time per named step, for the round's report."""

from __future__ import annotations

import time


class Stopwatch:
    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str, minus: float = 0.0) -> None:
        """Record the time since the previous lap under `name` (less `minus` seconds
        already reported under another name)."""
        now = time.perf_counter()
        self.laps[name] = now - self._last - minus
        self._last = now

    def add(self, name: str, seconds: float) -> None:
        self.laps[name] = seconds
