"""Collect the clients' uploaded scalars: verify, validate, keep a ledger of every refusal."""

from __future__ import annotations

import hashlib
import time
from datetime import datetime, timezone

from prefect import get_run_logger, task

from ecos_core import layout
from ecos_core.auth import load_enrollment, open_signed_response
from ecos_core.protocol import MAX_RESPONSE_BYTES, ProtocolError, Response, decode_response
from ecos_core.store import Store, StoreError
from tasks import catalog


class QuorumNotMet(RuntimeError):
    pass


def client_keys(store: Store, clients: list[str]):  # noqa: ANN202
    keys = {c: load_enrollment(store, c).key_b64 for c in clients}
    return keys.get  # only the round's expected clients have a key here


def check_upload(store: Store, key: str, data: bytes, round_id: str, clients: list[str], k: int, sigma: float,
                 key_for) -> Response:  # noqa: ANN001 (a key lookup callable)
    """The response in an upload, if it is signed by the client it claims to be, stored
    under that client's own name, and valid for this round; ProtocolError otherwise."""
    inner = open_signed_response(data, store.uri(key), key_for)
    resp = decode_response(inner, store.uri(key), expected_round=round_id, expected_k=k, sigma=sigma,
                           known_clients=set(clients))  # fmt: skip
    if key != layout.response(round_id, resp.client_id):
        raise ProtocolError(f"{store.uri(key)}: client {resp.client_id!r} answered under another name")
    return resp


@task(name="collect-responses")
def collect_responses(
    store_url: str, round_id: str, clients: list[str], quorum: int, deadline: str, sigma: float, k: int,
    poll_s: float = 1.0, wait: bool = True,
) -> dict:  # fmt: skip
    """Read rounds/<id>/responses/ until every client answered or the deadline passed
    (wait=False: one pass, for a round resumed after the watcher saw the uploads).

    A response is used only if its signature verifies with the claimed client's key, it is
    stored under that client's own name, and it passes protocol validation. The accepted
    bytes are copied to rounds/<id>/accepted/ (cloud-only), so a later overwrite of the
    upload changes nothing; it is recorded as a duplicate. Everything refused is in
    rounds/<id>/ledger.json with its reason.
    """
    log = get_run_logger()
    store = catalog.store(store_url)
    end = datetime.fromisoformat(deadline)
    key_for = client_keys(store, clients)
    accepted: dict[str, dict] = {}
    rejected: list[dict] = []
    seen: dict[str, str] = {}  # key -> sha256 of the bytes already judged
    start = time.perf_counter()

    def judge(key: str, late: bool) -> None:
        try:
            data = store.read_bytes(key, max_bytes=MAX_RESPONSE_BYTES)
        except (StoreError, FileNotFoundError) as err:
            rejected.append({"key": key, "reason": str(err)})
            return
        digest = hashlib.sha256(data).hexdigest()
        if seen.get(key) == digest:
            return
        first_look = key not in seen
        seen[key] = digest
        try:
            if late:
                raise ProtocolError(f"{store.uri(key)}: arrived after the deadline {deadline}")
            resp = check_upload(store, key, data, round_id, clients, k, sigma, key_for)
            if resp.client_id in accepted or not first_look:
                raise ProtocolError(f"{store.uri(key)}: duplicate upload from {resp.client_id!r}; the first one is used")
        except ProtocolError as err:
            rejected.append({"key": key, "reason": str(err)})
            log.warning("response refused: %s", err)
            return
        store.write_bytes(layout.accepted(round_id, resp.client_id), data)
        accepted[resp.client_id] = {"scores": resp.scores().tolist(), "bytes": len(data),
                                    "received_after_s": round(time.perf_counter() - start, 2)}  # fmt: skip
        log.info("response from %s accepted (%d bytes)", resp.client_id, len(data))

    while True:
        for key in store.list(layout.responses_prefix(round_id)):
            judge(key, late=False)
        if not wait or len(accepted) == len(clients) or datetime.now(timezone.utc) >= end:
            break
        time.sleep(poll_s)
    if datetime.now(timezone.utc) >= end:  # uploads that raced the deadline are late
        for key in store.list(layout.responses_prefix(round_id)):
            judge(key, late=True)
    missing = sorted(set(clients) - set(accepted))
    ledger = {"round_id": round_id, "accepted": {c: {k_: v for k_, v in a.items() if k_ != "scores"} for c, a in accepted.items()},
              "rejected": rejected, "missing": missing, "quorum": quorum, "deadline": deadline}  # fmt: skip
    store.write_json(layout.round_key(round_id, "ledger.json"), ledger)
    if len(accepted) < quorum:
        raise QuorumNotMet(f"round {round_id}: {len(accepted)} of {len(clients)} clients answered by the deadline "
                           f"({deadline}), quorum is {quorum}; missing {missing}")  # fmt: skip
    return {"accepted": accepted, "rejected": rejected, "missing": missing, "seconds": time.perf_counter() - start}
