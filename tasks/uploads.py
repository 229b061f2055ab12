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

import functools
import hashlib
import re
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from ecos_core.storage import layout
from ecos_core.exchange.auth import UnknownClient, load_enrollment, open_signed_response, registry_key
from ecos_core.exchange.protocol import MAX_RESPONSE_BYTES, ProtocolError, Response, cut, decode_response
from ecos_core.storage.store import Store, StoreError, Version

MAX_REASON_CHARS = 600  # a verdict stays far below the 64 KB that verdicts() reads


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
        invited = frozenset(clients)

        @functools.cache  # successes only: a registry that failed to read is read again next time
        def key_for(client_id: str) -> str | None:  # read when its first upload is judged, not all upfront
            if client_id not in invited:
                return None
            try:
                return load_enrollment(store, client_id).key_b64
            except UnknownClient:
                return None  # its enrollment was removed since the probe: an upload it cannot have signed
            except StoreError:
                raise
            except Exception as err:  # noqa: BLE001 - a broken registry entry is the cloud's problem, not a refusal
                why = f"{store.uri(registry_key(client_id))}: unusable ({type(err).__name__}: {err})"
                raise StoreError(why) from err

        return RoundTerms(round_id, tuple(clients), k, sigma, deadline, key_for)  # only invited clients have a key


def check_upload(store: Store, key: str, data: bytes, terms: RoundTerms) -> Response:
    """The response in an upload, if it is signed by the client it claims to be, stored
    under that client's own name, and valid for this round; ProtocolError otherwise, for
    anything the bytes provoke. Only the store's failures (reading a key) are raised as they are."""
    try:
        inner = open_signed_response(data, store.uri(key), terms.key_for)
        resp = decode_response(inner, store.uri(key), expected_round=terms.round_id, expected_k=terms.k,
                               sigma=terms.sigma, known_clients=set(terms.clients))  # fmt: skip
    except (ProtocolError, StoreError):
        raise
    except Exception as err:  # noqa: BLE001 - a parser's surprise on hostile bytes is a refusal, never a crash
        raise ProtocolError(f"{store.uri(key)}: not a usable signed response ({type(err).__name__}: {err})") from None
    if key != layout.response(terms.round_id, resp.client_id):
        raise ProtocolError(f"{store.uri(key)}: client {resp.client_id!r} answered under another name")
    return resp


def _digest(key: str, version: Version) -> str:
    return hashlib.sha256(f"{key}\n{version.id}".encode()).hexdigest()[:32]


class Replaced(Exception):
    """The object changed between its listing and its read: the next sweep judges the new one."""


def _read_listed(store: Store, key: str, version: Version) -> bytes:
    """The bytes of exactly the listed version, or Replaced. On S3 the ETag of a plain PUT
    is the content's MD5; elsewhere the object is looked at again after the read."""
    data = store.read_bytes(key, MAX_RESPONSE_BYTES)
    if re.fullmatch(r"[0-9a-f]{32}", version.tag):
        if hashlib.md5(data, usedforsecurity=False).hexdigest() != version.tag:
            raise Replaced(key)
    elif store.version(key) != version:
        raise Replaced(key)
    return data


def judge(store: Store, key: str, version: Version, terms: RoundTerms) -> dict:
    """The verdict on one version of one upload; a valid first answer is copied to accepted/.
    Raises Replaced (no verdict) when the object is no longer that version."""
    verdict = {"key": key, "version": version.id, "judged_at": datetime.now(timezone.utc).isoformat()}
    try:
        if version.modified > terms.deadline:
            raise ProtocolError(f"{store.uri(key)}: arrived after the deadline {terms.deadline.isoformat()} "
                                f"(at {version.modified.isoformat()})")  # fmt: skip
        if version.size > MAX_RESPONSE_BYTES:
            raise ProtocolError(f"{store.uri(key)}: {version.size} bytes, larger than the {MAX_RESPONSE_BYTES}-byte limit")
        try:
            data = _read_listed(store, key, version)
        except FileNotFoundError:
            raise Replaced(key) from None
        except StoreError as err:
            if "larger than" not in str(err):
                raise
            raise Replaced(key) from None  # it grew since the listing: not the listed version
        resp = check_upload(store, key, data, terms)
        copy = layout.accepted(terms.round_id, resp.client_id)
        try:
            store.write_bytes(copy, data, overwrite=False)
        except FileExistsError:
            # the same bytes: this answer, judged again after a crash between the copy and the
            # verdict (or uploaded twice): still the accepted answer, not a refusal
            if store.read_bytes(copy, MAX_RESPONSE_BYTES) != data:
                raise ProtocolError(f"{store.uri(key)}: duplicate upload from {resp.client_id!r} (differs from the "
                                    "accepted answer); the first one is used") from None  # fmt: skip
        return {**verdict, "client_id": resp.client_id, "verdict": "accepted", "bytes": len(data)}
    except ProtocolError as err:
        return {**verdict, "verdict": "refused", "reason": cut(str(err), MAX_REASON_CHARS)}


PARALLEL = 16  # uploads judged at once: each is a few small S3 requests, so threads overlap their waits


def judge_new_uploads(store: Store, terms: RoundTerms, errors: list[str] | None = None) -> list[dict]:
    """Judge every upload version not judged before (by anyone); returns the new verdicts.
    Nothing is half-judged: a verdict is written only after its accepted copy. An upload
    that cannot be judged now (the store failing) gets no verdict and is judged next
    time; its error goes to `errors`, or is raised after the others are judged when
    `errors` is None. Uploads are judged in parallel: each client writes only under its
    own name, so no two of them touch the same objects."""
    judged = set(store.list(layout.verdicts_prefix(terms.round_id)))  # one LIST, not one request per upload
    todo = [(key, version, layout.verdict(terms.round_id, _digest(key, version)))
            for key, version in store.versions(layout.responses_prefix(terms.round_id)).items()]  # fmt: skip
    todo = [t for t in todo if t[2] not in judged]

    def one(item: tuple[str, Version, str]) -> dict | None:
        key, version, where = item
        try:
            verdict = judge(store, key, version, terms)
        except Replaced:
            return None
        try:
            store.write_json(where, verdict, overwrite=False)
        except FileExistsError:
            return None  # judged at the same moment by another process: its verdict stands
        return verdict

    new, failed = [], []
    with ThreadPoolExecutor(PARALLEL) as pool:
        for item, future in [(t, pool.submit(one, t)) for t in todo]:
            try:
                if (verdict := future.result()) is not None:
                    new.append(verdict)
            except Exception as err:  # noqa: BLE001 - judged again next time
                failed.append((item[0], err))
    if failed and errors is None:
        raise failed[0][1]
    if errors is not None:
        errors += [cut(f"{store.uri(key)}: not judged yet ({type(err).__name__}: {err})", MAX_REASON_CHARS)
                   for key, err in failed]  # fmt: skip
    return new


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


def accepted_answers(store: Store, terms: RoundTerms, problems: list[dict] | None = None) -> dict[str, Response]:
    """The accepted answer of each client that has one, re-verified: accepted/ is cloud-only,
    but a copy changed since (or signed with a key rotated since) is never used; it is
    left out and listed in `problems` instead of failing the round."""
    have = sorted(answered(store, terms.round_id) & set(terms.clients))

    def read(client_id: str) -> Response | ProtocolError:
        copy = layout.accepted(terms.round_id, client_id)
        try:
            return check_upload(store, layout.response(terms.round_id, client_id),
                                store.read_bytes(copy, MAX_RESPONSE_BYTES), terms)  # fmt: skip
        except ProtocolError as err:
            why = f"{store.uri(copy)}: the accepted copy no longer verifies ({err})"
            return ProtocolError(cut(why, MAX_REASON_CHARS))

    with ThreadPoolExecutor(PARALLEL) as pool:
        found = dict(zip(have, pool.map(read, have)))
    for client_id, err in found.items():
        if isinstance(err, ProtocolError) and problems is not None:
            problems.append({"key": layout.accepted(terms.round_id, client_id), "reason": str(err)})
    return {c: r for c, r in found.items() if not isinstance(r, ProtocolError)}


def watcher_silence(store: Store, max_age_s: float = 30.0) -> str | None:
    """Why no watcher will resume a round suspended now, or None when one swept lately."""
    try:
        beat = store.read_json(layout.WATCHER_HEARTBEAT, 1 << 16)
        age = (datetime.now(timezone.utc) - datetime.fromisoformat(beat["last_sweep_at"])).total_seconds()
    except FileNotFoundError:
        return "no watcher has swept this store yet"
    except (StoreError, KeyError, TypeError, ValueError) as err:
        return f"the watcher's heartbeat cannot be read ({type(err).__name__}: {err})"
    return f"the watcher last swept {age:.0f} s ago" if age > max_age_s else None
