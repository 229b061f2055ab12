"""The device's own privacy ledger: every response it sent, and the ε they add up to.

The device, not the cloud, decides whether one more answer fits its lifetime budget:
it composes all its past Gaussian releases with dp-accounting (PLD) and refuses a round
that would go over, or a second answer to a round it already answered. A ledger file
that cannot be read is an error, never an empty ledger: resetting it would let the
device overspend. Record before uploading, so a crash can only over-count.

Beside the ledger (`<ledger>.responses/<round>.json`, mode 600) the device keeps each
signed response it released, before the first upload attempt: an upload that fails is
re-sent byte for byte later (no fresh noise, so no second release and no second ε), and
once the cloud has it the copy is marked sent. Ledgers written before kept copies existed
read as before (their entries carry no response hash).
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

import dp_accounting
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from ecos_core.privacy.accounting import epsilon, gaussian_event
from ecos_core.storage.private_file import write_private as _write_atomic
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
    sent_at: AwareDatetime  # when ε was recorded: before the first upload attempt
    response_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")  # the kept response; None in old ledgers


class KeptResponse(BaseModel):
    """One signed response exactly as released, kept on the device until the cloud has it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = Field(1, ge=1, le=1)
    round_id: str = Field(pattern=ID_PATTERN)
    client_id: str = Field(pattern=ID_PATTERN)
    sigma: float = Field(gt=0)
    delta: float = Field(gt=0, lt=1)
    deadline: AwareDatetime  # the upload URL expires then
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    signed_b64: str
    kept_at: AwareDatetime
    sent_at: AwareDatetime | None = None  # set once an upload was confirmed

    def signed(self) -> bytes:
        return base64.b64decode(self.signed_b64, validate=True)


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

    @property
    def kept_dir(self) -> Path:
        return self.path.with_name(f"{self.path.stem}.responses")

    def kept_path(self, round_id: str) -> Path:
        return self.kept_dir / f"{round_id}.json"  # round ids match ID_PATTERN: a plain file name

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

    def record(self, round_id: str, sigma: float, delta: float, response_sha256: str | None = None) -> LedgerEntry:
        """Append one release (atomically: a crash leaves the old or the new file, never half)."""
        entries = self.entries()
        if any(e.round_id == round_id for e in entries):
            raise DuplicateRound(f"privacy ledger {self.path}: round {round_id!r} is already recorded")
        entry = LedgerEntry(round_id=round_id, sigma=sigma, delta=delta, sent_at=datetime.now(timezone.utc),
                            response_sha256=response_sha256)  # fmt: skip
        # exclude_none: entries without a kept response are written exactly as before
        doc = _LedgerFile(entries=[*entries, entry]).model_dump_json(indent=1, exclude_none=True)
        _write_atomic(self.path, doc.encode())
        return entry

    def entry(self, round_id: str) -> LedgerEntry | None:
        return next((e for e in self.entries() if e.round_id == round_id), None)

    def kept(self, round_id: str) -> KeptResponse | None:
        """The response kept for `round_id`, or None; an unreadable copy is an error (never
        a reason to compute a second answer)."""
        path = self.kept_path(round_id)
        try:
            kept = KeptResponse.model_validate_json(path.read_bytes())
            signed = kept.signed()
        except FileNotFoundError:
            return None
        except (ValidationError, ValueError) as err:
            raise ValueError(f"kept response {path}: unreadable ({' '.join(str(err).split())[:200]}); "
                             "inspect or restore it (answering again would release new noise)") from None  # fmt: skip
        if kept.round_id != round_id or hashlib.sha256(signed).hexdigest() != kept.sha256:
            raise ValueError(f"kept response {path}: its round or sha256 does not match its bytes; inspect it")
        return kept

    def keep(self, round_id: str, client_id: str, sigma: float, delta: float, deadline: datetime,
             signed: bytes) -> KeptResponse:  # fmt: skip
        """Keep this signed response for `round_id` unless one is kept already: then that
        one is returned (two runs racing on one round release one answer, not two)."""
        now = datetime.now(timezone.utc)
        kept = KeptResponse(round_id=round_id, client_id=client_id, sigma=sigma, delta=delta, deadline=deadline,
                            sha256=hashlib.sha256(signed).hexdigest(), signed_b64=base64.b64encode(signed).decode(),
                            kept_at=now)  # fmt: skip
        self.kept_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            _write_atomic(self.kept_path(round_id), kept.model_dump_json(indent=1).encode(), exclusive=True)
        except FileExistsError:
            existing = self.kept(round_id)
            assert existing is not None  # it was just there, and nothing on the device deletes it
            return existing
        return kept

    def mark_sent(self, round_id: str) -> KeptResponse:
        """The cloud confirmed the upload: a later run says so and sends nothing."""
        kept = self.kept(round_id)
        if kept is None:
            raise ValueError(f"kept response {self.kept_path(round_id)}: missing; cannot mark it sent")
        sent = kept.model_copy(update={"sent_at": datetime.now(timezone.utc)})
        _write_atomic(self.kept_path(round_id), sent.model_dump_json(indent=1).encode())
        return sent
