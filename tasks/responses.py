"""Wait for the clients' uploaded scalars, validate each, keep a ledger of what was refused."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from prefect import get_run_logger, task

from ecos_core import layout
from ecos_core.protocol import MAX_RESPONSE_BYTES, ProtocolError, decode_response
from ecos_core.store import StoreError
from tasks import catalog


class QuorumNotMet(RuntimeError):
    pass


@task(name="collect-responses")
def collect_responses(
    store_url: str, round_id: str, clients: list[str], quorum: int, deadline: str, sigma: float, k: int, poll_s: float = 1.0
) -> dict:
    """Poll the round's response folder until every client answered or the deadline passed.

    The first valid response of each expected client is used; anything else (malformed,
    wrong round, unknown client, a name that is not the client's own) is recorded in
    rounds/<id>/ledger.json with its reason and never used.
    """
    log = get_run_logger()
    store = catalog.store(store_url)
    end = datetime.fromisoformat(deadline)
    accepted: dict[str, dict] = {}
    rejected: list[dict] = []
    seen: set[str] = set()
    start = time.perf_counter()
    while True:
        for key in store.list(layout.responses_prefix(round_id)):
            if key in seen:
                continue
            seen.add(key)
            try:
                data = store.read_bytes(key, max_bytes=MAX_RESPONSE_BYTES)
                resp = decode_response(data, store.uri(key), expected_round=round_id, expected_k=k, sigma=sigma,
                                       known_clients=set(clients))  # fmt: skip
                if key != layout.response(round_id, resp.client_id):
                    raise ProtocolError(f"{store.uri(key)}: client {resp.client_id!r} answered under another name")
                if resp.client_id in accepted:
                    raise ProtocolError(f"{store.uri(key)}: duplicate response from {resp.client_id!r}")
            except (ProtocolError, StoreError) as err:
                rejected.append({"key": key, "reason": str(err)})
                log.warning("response refused: %s", err)
                continue
            accepted[resp.client_id] = {"scores": resp.scores().tolist(), "bytes": len(data),
                                        "received_after_s": round(time.perf_counter() - start, 2)}  # fmt: skip
            log.info("response from %s accepted (%d bytes)", resp.client_id, len(data))
        if len(accepted) == len(clients) or datetime.now(timezone.utc) >= end:
            break
        time.sleep(poll_s)
    missing = sorted(set(clients) - set(accepted))
    ledger = {"round_id": round_id, "accepted": {c: {k_: v for k_, v in a.items() if k_ != "scores"} for c, a in accepted.items()},
              "rejected": rejected, "missing": missing, "quorum": quorum}  # fmt: skip
    store.write_json(layout.round_key(round_id, "ledger.json"), ledger)
    if len(accepted) < quorum:
        raise QuorumNotMet(f"round {round_id}: {len(accepted)} of {len(clients)} clients answered by the deadline "
                           f"({deadline}), quorum is {quorum}; missing {missing}")  # fmt: skip
    return {"accepted": accepted, "rejected": rejected, "missing": missing, "seconds": time.perf_counter() - start}
