"""The device's own privacy ledger: every response it sent, and the ε they add up to.

The device, not the cloud, decides whether one more answer fits its lifetime budget:
it composes all its past Gaussian releases with dp-accounting (PLD) and refuses a round
that would go over, or a second answer to a round it already answered. A ledger file
that cannot be read is an error, never an empty ledger: resetting it would let the
device overspend. Record before uploading, so a crash can only over-count.
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

import dp_accounting
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from ecos_core.privacy.accounting import epsilon, gaussian_event
from ecos_core.exchange.protocol import ID_PATTERN

LEDGER_VERSION = 1


class PrivacyBudgetExceeded(ValueError):
    """One more response would take the device past its lifetime ε budget."""


class DuplicateRound(ValueError):
    """The device already answered this round; a second answer would be a second release."""


class LedgerEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    round_id: str = Field(pattern=ID_PATTERN)
    sigma: float = Field(gt=0)
    delta: float = Field(gt=0, lt=1)
    sent_at: AwareDatetime


class _LedgerFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = Field(LEDGER_VERSION, ge=LEDGER_VERSION, le=LEDGER_VERSION)
    entries: list[LedgerEntry] = []


def composed_epsilon(sigmas: Iterable[float], delta: float) -> float:
    """ε at `delta` of Gaussian releases (sensitivity 1) with these noise stds, composed; 0 for none.

    Equal sigmas are grouped into one self-composed event: the same ε, and PLD stays fast
    for a long ledger.
    """
    counts = Counter(float(s) for s in sigmas)
    if not counts:
        return 0.0
    events = [gaussian_event(sigma, releases=n) for sigma, n in sorted(counts.items())]
    return epsilon(dp_accounting.ComposedDpEvent(events), delta, accountant="pld")


class PrivacyLedger:
    """A JSON file listing the device's releases; re-read on every call, so instances agree."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"PrivacyLedger({str(self.path)!r})"

    def entries(self) -> list[LedgerEntry]:
        """All recorded releases; [] only when the file does not exist yet."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        try:
            return list(_LedgerFile.model_validate_json(data).entries)
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'document'}: {e['msg']}" for e in err.errors())
            raise ValueError(
                f"privacy ledger {self.path}: unreadable ({problems}); refusing to treat it as empty "
                "(that would reset the privacy budget): restore or inspect the file"
            ) from None

    def rounds(self) -> set[str]:
        return {e.round_id for e in self.entries()}

    def spent(self, delta: float) -> float:
        return composed_epsilon((e.sigma for e in self.entries()), delta)

    def would_spend(self, sigma: float, delta: float) -> float:
        """ε after one more release with noise `sigma`."""
        return composed_epsilon([*(e.sigma for e in self.entries()), sigma], delta)

    def check(self, round_id: str, sigma: float, delta: float, budget: float) -> float:
        """ε after answering `round_id`; raises if it was answered already or would exceed `budget`."""
        entries = self.entries()
        if any(e.round_id == round_id for e in entries):
            raise DuplicateRound(
                f"privacy ledger {self.path}: round {round_id!r} was already answered; not answering twice"
            )
        spent = composed_epsilon((e.sigma for e in entries), delta)
        after = composed_epsilon([*(e.sigma for e in entries), sigma], delta)
        if after > budget:
            raise PrivacyBudgetExceeded(
                f"privacy ledger {self.path}: answering round {round_id!r} (sigma={sigma:g}) would raise ε from "
                f"{spent:.3f} to {after:.3f} at delta={delta:g}, over the budget {budget:.3f}"
            )
        return after

    def record(self, round_id: str, sigma: float, delta: float) -> LedgerEntry:
        """Append one release (atomically: a crash leaves the old or the new file, never half)."""
        entries = self.entries()
        if any(e.round_id == round_id for e in entries):
            raise DuplicateRound(f"privacy ledger {self.path}: round {round_id!r} is already recorded")
        entry = LedgerEntry(round_id=round_id, sigma=sigma, delta=delta, sent_at=datetime.now(timezone.utc))
        doc = _LedgerFile(entries=[*entries, entry]).model_dump_json(indent=1).encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as f:
                f.write(doc)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return entry
