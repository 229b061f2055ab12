"""Judging the clients' uploads: the one place that decides what a response object is worth.

The watcher calls `judge_new_uploads` on every sweep and the round's collector on every
pass, so whichever sees an upload first judges it. The invariant: the first valid answer
of each invited client is never lost or replaced. It holds because
- the first valid answer is copied at once to the cloud-only accepted/ (never
  overwritten); later bytes at the client's URL are refused as duplicates;
- the pre-signed URLs expire at the deadline itself, so nothing can replace an on-time
  answer afterwards;
- every version of every upload gets one verdict, written to the cloud-only verdicts/
  under a digest of (key, version): it is judged and ledgered once, whichever process,
  sweep or re-run of the round sees it.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from ecos_core import layout
from ecos_core.auth import load_enrollment, open_signed_response
from ecos_core.protocol import MAX_RESPONSE_BYTES, ProtocolError, Response, decode_response
from ecos_core.store import Store, StoreError, Version


@dataclass(frozen=True)
class RoundTerms:
    """What an upload must match: the round's probe and its invited clients' keys."""

    round_id: str
    clients: tuple[str, ...]
    k: int
    sigma: float
    deadline: datetime
    key_for: Callable[[str], str | None]

    @staticmethod
    def load(store: Store, round_id: str, clients: list[str], k: int, sigma: float, deadline: datetime) -> "RoundTerms":
        keys = {c: load_enrollment(store, c).key_b64 for c in clients}
        return RoundTerms(round_id, tuple(clients), k, sigma, deadline, keys.get)  # only invited clients have a key


def check_upload(store: Store, key: str, data: bytes, terms: RoundTerms) -> Response:
    """The response in an upload, if it is signed by the client it claims to be, stored
    under that client's own name, and valid for this round; ProtocolError otherwise."""
    inner = open_signed_response(data, store.uri(key), terms.key_for)
    resp = decode_response(inner, store.uri(key), expected_round=terms.round_id, expected_k=terms.k, sigma=terms.sigma,
                           known_clients=set(terms.clients))  # fmt: skip
    if key != layout.response(terms.round_id, resp.client_id):
        raise ProtocolError(f"{store.uri(key)}: client {resp.client_id!r} answered under another name")
    return resp


def _digest(key: str, version: Version) -> str:
    return hashlib.sha256(f"{key}\n{version.id}".encode()).hexdigest()[:32]


def judge(store: Store, key: str, version: Version, terms: RoundTerms) -> dict:
    """The verdict on one version of one upload; a valid first answer is copied to accepted/."""
    verdict = {"key": key, "version": version.id, "judged_at": datetime.now(timezone.utc).isoformat()}
    try:
        if version.modified > terms.deadline:
            raise ProtocolError(f"{store.uri(key)}: arrived after the deadline {terms.deadline.isoformat()} "
                                f"(at {version.modified.isoformat()})")  # fmt: skip
        if version.size > MAX_RESPONSE_BYTES:
            raise ProtocolError(f"{store.uri(key)}: {version.size} bytes, larger than the {MAX_RESPONSE_BYTES}-byte limit")
        try:
            data = store.read_bytes(key, MAX_RESPONSE_BYTES)
        except (StoreError, FileNotFoundError) as err:  # replaced or removed since the listing
            if "larger than" not in str(err) and not isinstance(err, FileNotFoundError):
                raise
            raise ProtocolError(str(err)) from None
        resp = check_upload(store, key, data, terms)
        copy = layout.accepted(terms.round_id, resp.client_id)
        try:
            store.write_bytes(copy, data, overwrite=False)
        except FileExistsError:
            same = "identical to" if store.read_bytes(copy, MAX_RESPONSE_BYTES) == data else "differs from"
            raise ProtocolError(f"{store.uri(key)}: duplicate upload from {resp.client_id!r} ({same} the accepted "
                                "answer); the first one is used") from None  # fmt: skip
        return {**verdict, "client_id": resp.client_id, "verdict": "accepted", "bytes": len(data)}
    except ProtocolError as err:
        return {**verdict, "verdict": "refused", "reason": str(err)}


PARALLEL = 16  # uploads judged at once: each is a few small S3 requests, so threads overlap their waits


def judge_new_uploads(store: Store, terms: RoundTerms) -> list[dict]:
    """Judge every upload version not judged before (by anyone); returns the new verdicts.
    Store errors propagate: the caller retries the sweep, nothing is half-judged (a
    verdict is written only after its accepted copy). Uploads are judged in parallel:
    each client writes only under its own name, so no two of them touch the same objects."""
    judged = set(store.list(layout.verdicts_prefix(terms.round_id)))  # one LIST, not one request per upload
    todo = [(key, version, layout.verdict(terms.round_id, _digest(key, version)))
            for key, version in store.versions(layout.responses_prefix(terms.round_id)).items()]  # fmt: skip
    todo = [t for t in todo if t[2] not in judged]

    def one(item: tuple[str, Version, str]) -> dict | None:
        key, version, where = item
        verdict = judge(store, key, version, terms)
        try:
            store.write_json(where, verdict, overwrite=False)
        except FileExistsError:
            return None  # judged at the same moment by another process: its verdict stands
        return verdict

    with ThreadPoolExecutor(PARALLEL) as pool:
        return [v for v in pool.map(one, todo) if v is not None]


def verdicts(store: Store, round_id: str) -> list[dict]:
    """Every verdict of the round so far, oldest first."""
    keys = store.list(layout.verdicts_prefix(round_id))
    with ThreadPoolExecutor(PARALLEL) as pool:
        found = list(pool.map(lambda k: store.read_json(k, 1 << 16), keys))
    return sorted(found, key=lambda v: (v["judged_at"], v["key"]))


def answered(store: Store, round_id: str) -> set[str]:
    """The clients with an accepted answer, from one listing (cheap enough for every sweep)."""
    prefix = layout.accepted(round_id, "x").rsplit("/", 1)[0]
    return {k.rsplit("/", 1)[-1].removesuffix(".json") for k in store.list(prefix)}


def accepted_answers(store: Store, terms: RoundTerms) -> dict[str, Response]:
    """The accepted answer of each client that has one (re-verified: accepted/ is cloud-only,
    but a changed copy must never be used)."""
    have = sorted(answered(store, terms.round_id) & set(terms.clients))

    def read(client_id: str) -> Response:
        data = store.read_bytes(layout.accepted(terms.round_id, client_id), MAX_RESPONSE_BYTES)
        return check_upload(store, layout.response(terms.round_id, client_id), data, terms)

    with ThreadPoolExecutor(PARALLEL) as pool:
        return dict(zip(have, pool.map(read, have)))


def watcher_silence(store: Store, max_age_s: float = 30.0) -> str | None:
    """Why no watcher will resume a round suspended now, or None when one swept lately."""
    try:
        beat = store.read_json(layout.WATCHER_HEARTBEAT, 1 << 16)
    except FileNotFoundError:
        return "no watcher has ever swept this store"
    age = (datetime.now(timezone.utc) - datetime.fromisoformat(beat["last_sweep_at"])).total_seconds()
    return f"the watcher last swept {age:.0f} s ago" if age > max_age_s else None
