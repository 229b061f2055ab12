"""Collect the clients' uploaded scalars: the verdicts of tasks/uploads.py, a ledger of
every upload, and the quorum."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from prefect import get_run_logger, task

from ecos_core.storage import layout
from tasks import catalog
from tasks.uploads import RoundTerms, accepted_answers, answered, judge_new_uploads, verdicts


class QuorumNotMet(RuntimeError):
    pass


@task(name="collect-responses")
def collect_responses(
    store_url: str, round_id: str, clients: list[str], quorum: int, deadline: str, sigma: float, k: int,
    poll_s: float = 1.0, wait: bool = True,
) -> dict:  # fmt: skip
    """Judge rounds/<id>/responses/ until every client answered or the deadline passed
    (wait=False: one pass, for a round the watcher resumed: it judged the uploads already).

    A response is used only if its signature verifies with the claimed client's key, it is
    stored under that client's own name, it passes protocol validation, and it landed
    before the deadline; the first such answer of a client is the one used, whatever is
    uploaded after it (see tasks/uploads.py). rounds/<id>/ledger.json lists every upload
    version once, accepted or refused with its reason, and the clients that never answered.
    """
    log = get_run_logger()
    store = catalog.store(store_url)
    terms = RoundTerms.load(store, round_id, clients, k, sigma, datetime.fromisoformat(deadline))
    start = time.perf_counter()

    def judge_pass() -> None:
        for v in judge_new_uploads(store, terms):
            if v["verdict"] == "accepted":
                log.info("response from %s accepted (%d bytes)", v["client_id"], v["bytes"])
            else:
                log.warning("response refused: %s", v["reason"])

    while True:
        judge_pass()
        if not wait or answered(store, round_id) >= set(clients):
            break
        if datetime.now(timezone.utc) >= terms.deadline:
            judge_pass()  # what landed meanwhile gets its verdict too (late ones: refused as late)
            break
        time.sleep(poll_s)
    problems: list[dict] = []
    answers = accepted_answers(store, terms, problems)
    judged = verdicts(store, round_id)
    first = {v["client_id"]: v for v in reversed(judged) if v["verdict"] == "accepted"}  # each client's first
    accepted = {c: {"scores": r.scores().tolist(), "bytes": first[c]["bytes"] if c in first else 0,
                    "judged_at": first[c]["judged_at"] if c in first else None}
                for c, r in answers.items()}  # fmt: skip
    rejected = [{"key": v["key"], "reason": v["reason"]} for v in judged if v["verdict"] == "refused"] + problems
    missing = sorted(set(clients) - set(accepted))
    ledger = {"round_id": round_id, "accepted": {c: {k_: v for k_, v in a.items() if k_ != "scores"} for c, a in accepted.items()},
              "rejected": rejected, "missing": missing, "quorum": quorum, "deadline": deadline, "uploads": judged}  # fmt: skip
    store.write_json(layout.round_key(round_id, "ledger.json"), ledger)
    if len(accepted) < quorum:
        raise QuorumNotMet(f"round {round_id}: {len(accepted)} of {len(clients)} clients answered by the deadline "
                           f"({deadline}), quorum is {quorum}; missing {missing}")  # fmt: skip
    return {"accepted": accepted, "rejected": rejected, "missing": missing, "seconds": time.perf_counter() - start}
