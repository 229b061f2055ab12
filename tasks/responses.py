"""Collect the clients' uploaded scalars: verify, validate, keep a ledger of every refusal."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from prefect import get_run_logger, task

from ecos_core import layout
from ecos_core.auth import load_enrollment, open_signed_response
from ecos_core.protocol import MAX_RESPONSE_BYTES, ProtocolError, Response, decode_response
from ecos_core.store import Store
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
    stored under that client's own name, it passes protocol validation, and the object
    was last modified before the deadline. The first accepted bytes are copied to
    rounds/<id>/accepted/ (cloud-only, never overwritten): a re-run of the round reads
    them back, so a later overwrite of the upload changes nothing; it is ledgered as a
    duplicate. Every refusal is in rounds/<id>/ledger.json with its reason, once per
    version of an object.
    """
    log = get_run_logger()
    store = catalog.store(store_url)
    end = datetime.fromisoformat(deadline)
    key_for = client_keys(store, clients)
    start = time.perf_counter()
    accepted: dict[str, dict] = {}
    for client_id in clients:  # answers accepted by an earlier attempt of this round stay accepted
        copy = layout.accepted(round_id, client_id)
        if store.exists(copy):
            data = store.read_bytes(copy, MAX_RESPONSE_BYTES)
            resp = check_upload(store, layout.response(round_id, client_id), data, round_id, clients, k, sigma, key_for)
            accepted[client_id] = {"scores": resp.scores().tolist(), "bytes": len(data), "received_after_s": 0.0}
    rejected: list[dict] = []
    judged: dict[str, tuple] = {}  # key -> (size, modified) of the version already judged

    def judge(key: str) -> None:
        try:
            version = store.version(key)
        except FileNotFoundError:
            return
        if judged.get(key) == version:
            return
        judged[key] = version
        size, modified = version
        try:
            if modified > end:
                raise ProtocolError(f"{store.uri(key)}: arrived after the deadline {deadline} (at {modified.isoformat()})")
            if size > MAX_RESPONSE_BYTES:
                raise ProtocolError(f"{store.uri(key)}: {size} bytes, larger than the {MAX_RESPONSE_BYTES}-byte limit")
            data = store.read_bytes(key)
            resp = check_upload(store, key, data, round_id, clients, k, sigma, key_for)
            if resp.client_id in accepted:
                raise ProtocolError(f"{store.uri(key)}: duplicate upload from {resp.client_id!r}; the first one is used")
            store.write_bytes(layout.accepted(round_id, resp.client_id), data, overwrite=False)
        except ProtocolError as err:
            rejected.append({"key": key, "reason": str(err)})
            log.warning("response refused: %s", err)
            return
        accepted[resp.client_id] = {"scores": resp.scores().tolist(), "bytes": len(data),
                                    "received_after_s": round(time.perf_counter() - start, 2)}  # fmt: skip
        log.info("response from %s accepted (%d bytes)", resp.client_id, len(data))

    while True:
        for key in store.list(layout.responses_prefix(round_id)):
            judge(key)
        if not wait or len(accepted) == len(clients) or datetime.now(timezone.utc) >= end:
            break
        time.sleep(poll_s)
    missing = sorted(set(clients) - set(accepted))
    ledger = {"round_id": round_id, "accepted": {c: {k_: v for k_, v in a.items() if k_ != "scores"} for c, a in accepted.items()},
              "rejected": rejected, "missing": missing, "quorum": quorum, "deadline": deadline}  # fmt: skip
    store.write_json(layout.round_key(round_id, "ledger.json"), ledger)
    if len(accepted) < quorum:
        raise QuorumNotMet(f"round {round_id}: {len(accepted)} of {len(clients)} clients answered by the deadline "
                           f"({deadline}), quorum is {quorum}; missing {missing}")  # fmt: skip
    return {"accepted": accepted, "rejected": rejected, "missing": missing, "seconds": time.perf_counter() - start}
