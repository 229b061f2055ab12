"""The round's step times, kept in the store so a round that suspends and resumes (or
is re-run after a crash) reports what each step really took: a step's time is recorded
the first time it completes, and the wait runs from the probe's publication to the
resume, not from the start of the resumed process."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from ecos_core.storage import layout
from tasks import catalog


class StepLog:
    def __init__(self, store_url: str, round_id: str) -> None:
        self.store, self.key = catalog.store(store_url), layout.round_key(round_id, "steps.json")
        found = self.store.read_json(self.key) if self.store.exists(self.key) else {}
        self.steps: dict[str, float] = dict(found.get("steps", []))  # [name, seconds] pairs: the order is kept
        self.marks: dict[str, str] = found.get("marks", {})
        self._last = time.perf_counter()

    def lap(self, name: str, minus: float = 0.0, since_mark: str | None = None) -> None:
        """The time since the previous lap (or since a mark an earlier process set), less
        `minus` seconds reported under another name; kept if recorded before."""
        now = time.perf_counter()
        seconds = now - self._last - minus
        if since_mark and since_mark in self.marks:
            seconds = (datetime.now(timezone.utc) - datetime.fromisoformat(self.marks[since_mark])).total_seconds()
        self._last = now
        self.steps.setdefault(name, max(seconds, 0.0))
        self._save()

    def add(self, name: str, seconds: float) -> None:
        self.steps.setdefault(name, seconds)
        self._save()

    def mark(self, name: str) -> None:
        self.marks.setdefault(name, datetime.now(timezone.utc).isoformat())
        self._save()

    def _save(self) -> None:
        self.store.write_json(self.key, {"steps": [[k, v] for k, v in self.steps.items()], "marks": self.marks})
