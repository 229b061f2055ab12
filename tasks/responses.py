"""Collect the clients' uploaded scalars: the verdicts of tasks/uploads.py, a ledger of
every upload, and the quorum."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from prefect import get_run_logger, task

from ecos_core.storage import layout
from ecos_core.storage.store import Store
from tasks import catalog
from tasks.uploads import RoundTerms, accepted_answers, answered, judge_new_uploads, verdicts

FINAL_TRIES = 3  # judge passes at the end for uploads the store failed to give: a passing hiccup is ridden out


class QuorumNotMet(RuntimeError):
    pass


class ProbeUnusable(RuntimeError):
    """The watcher resumed the round because its probe no longer verifies (changed or
    removed after publish): the round's answers are not used, and the cause is the error."""


@task(name="collect-responses")
def collect_responses(
    store_url: str, round_id: str, clients: list[str], quorum: int, deadline: str, sigma: float, k: int,
    poll_s: float = 1.0, wait: bool = True, probe_error: str | None = None,
) -> dict:  # fmt: skip
    """Judge rounds/<id>/responses/ until every client answered or the deadline passed
    (wait=False: one pass, for a round the watcher resumed: it judged the uploads already).

    A response is used only if its signature verifies with the claimed client's key, it is
    stored under that client's own name, it passes protocol validation, and it landed
    before the deadline; the first such answer of a client is the one used, whatever is
    uploaded after it (see tasks/uploads.py). rounds/<id>/ledger.json lists every upload
    version once, accepted or refused with its reason, the uploads the store failed to give
    (unjudged: they never stop the round), and the clients that never answered.
    probe_error: why the watcher resumed the round (its probe no longer verifies): the
    ledger is written, then ProbeUnusable names it, whatever the quorum.
    """
    log = get_run_logger()
    store = catalog.store(store_url)
    terms = RoundTerms.load(store, round_id, clients, k, sigma, datetime.fromisoformat(deadline))
    start = time.perf_counter()
    reported: set[str] = set()

    def judge_pass() -> list[str]:
        """One pass; the uploads it could not judge (the store failing on them), each logged once."""
        failed: list[str] = []
        for v in judge_new_uploads(store, terms, failed):
            if v["verdict"] == "accepted":
                log.info("response from %s accepted (%d bytes)", v["client_id"], v["bytes"])
            else:
                log.warning("response refused: %s", v["reason"])
        for message in set(failed) - reported:
            log.warning("%s", message)
        reported.update(failed)
        return failed

    while True:
        unjudged = judge_pass()
        if not wait or answered(store, round_id) >= set(clients):
            break
        if datetime.now(timezone.utc) >= terms.deadline:
            unjudged = judge_pass()  # what landed meanwhile gets its verdict too (late ones: refused as late)
            break
        time.sleep(poll_s)
    for _ in range(FINAL_TRIES - 1):
        if not unjudged:
            break
        time.sleep(poll_s)
        unjudged = judge_pass()
    return _conclude(store, terms, quorum, deadline, unjudged, probe_error, start)


def _conclude(
    store: Store, terms: RoundTerms, quorum: int, deadline: str, unjudged: list[str], probe_error: str | None,
    start: float,
) -> dict:  # fmt: skip
    """Write the ledger, then return the round's answers or raise the error that ends it."""
    round_id, clients = terms.round_id, list(terms.clients)
    problems: list[dict] = []
    answers = accepted_answers(store, terms, problems)
    judged = verdicts(store, round_id)
    first = {v["client_id"]: v for v in reversed(judged) if v["verdict"] == "accepted"}  # each client's first
    accepted = {c: {"scores": r.scores().tolist(), "bytes": first[c]["bytes"] if c in first else 0,
                    "judged_at": first[c]["judged_at"] if c in first else None}
                for c, r in answers.items()}  # fmt: skip
    rejected = [{"key": v["key"], "reason": v["reason"]} for v in judged if v["verdict"] == "refused"] + problems
    missing = sorted(set(clients) - set(accepted))
    summary = {c: {k_: v for k_, v in a.items() if k_ != "scores"} for c, a in accepted.items()}
    ledger = {"round_id": round_id, "accepted": summary,
              "rejected": rejected, "missing": missing, "quorum": quorum, "deadline": deadline, "uploads": judged,
              "unjudged": unjudged}  # fmt: skip
    if probe_error:
        ledger["probe_error"] = probe_error
    store.write_json(layout.round_key(round_id, "ledger.json"), ledger)
    if probe_error:
        raise ProbeUnusable(f"round {round_id}: {probe_error}; its answers are not used")
    if len(accepted) < quorum:
        unread = f"; {len(unjudged)} upload(s) the store failed to give: {unjudged[0]}" if unjudged else ""
        raise QuorumNotMet(f"round {round_id}: {len(accepted)} of {len(clients)} clients answered by the deadline "
                           f"({deadline}), quorum is {quorum}; missing {missing}{unread}")  # fmt: skip
    return {"accepted": accepted, "rejected": rejected, "missing": missing, "unjudged": unjudged,
            "seconds": time.perf_counter() - start}  # fmt: skip
