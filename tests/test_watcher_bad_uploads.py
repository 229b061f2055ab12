"""No byte string at any response URL can stop a round from being judged and resumed at
its deadline (issue 16, item 2), against the REAL services: rclone's S3 server, a Prefect
server and the supervised watcher process (`ecos watch`, sweeping every 2 s).

Several rounds run at once, each with 3 invited clients: 2 answer honestly, the third
URL gets one bad body (the reported 0-byte body and ~10 KB nesting bomb, and a sample of
the fuzz cases of tests/test_fuzz_uploads.py). Each round must be resumed by its deadline
plus a few seconds, with the 2 honest answers accepted and the bad one refused."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone

import pytest

from s3_faults import K, SIGMA, quiet_tasks, signed  # noqa: F401 (quiet_tasks: a fixture)
from test_watcher import live, state_of  # noqa: F401 (the module's own servers: fixtures are found by name)
import faults  # noqa: E402 (benchmarks/faults.py, put on sys.path by test_watcher)
from infra import services
from ecos_core.exchange import transport
from ecos_core.storage import layout

pytestmark = pytest.mark.slow

CLIENTS = ["client-0", "client-1", "client-2"]
DEADLINE_S = 16.0
MARGIN_S = 8.0  # the watcher sweeps every 2 s; the resume lands a sweep or two after the deadline


def bad_bodies(round_id: str) -> dict[str, bytes]:
    valid = signed(round_id, "client-2", [1.0] * K, "A" * 43 + "=")  # a well-formed answer under a wrong key
    doc = json.loads(valid)
    return {
        "empty (0 bytes)": b"",
        "nesting bomb (10 KB of '[')": b"[" * 10_000,
        "nested objects": b'{"response":' * 3000 + b"1" + b"}" * 3000,
        "invalid UTF-8": valid[:40] + b"\xed\xa0\x80\xff" + valid[40:],
        "huge integer": valid.replace(b'"k":8', b'"k":' + b"9" * 5000),
        "huge exponent": valid.replace(b'"k":8', b'"k":1e999999'),
        "truncated answer": valid[: len(valid) // 2],
        "k as a float": json.dumps({**doc, "response": {**doc["response"], "k": 8.0}}).encode(),
    }


@pytest.fixture(scope="module")
def watching(live):  # noqa: F811
    services.start("watcher", live.cfg)
    try:
        yield live
    finally:
        services.stop("watcher", live.cfg, quiet=True)


def test_no_upload_stops_a_round_from_resuming_at_its_deadline(watching, quiet_tasks):
    from flows.round_flow import ResponsesReady
    from tasks.responses import collect_responses

    live = watching
    cases = bad_bodies("x")
    rounds = {}
    for name in cases:  # each round's uploads right after its publication: a loaded machine publishes slowly
        rounds[name] = r = faults.suspended_round(live, DEADLINE_S, CLIENTS)
        body = bad_bodies(r.id)[name]
        transport.put(r.invites["client-2"].response_url, body)
        assert live.store.version(layout.response(r.id, "client-2")).size == len(body)
        for c, value in (("client-0", 1.0), ("client-1", 2.0)):
            transport.put(r.invites[c].response_url, signed(r.id, c, [value] * K, live.keys[c]))
    last = max(r.deadline for r in rounds.values())
    waiting, resumed_after = set(rounds), {}
    while waiting and (datetime.now(timezone.utc) - last).total_seconds() < MARGIN_S:
        for name in list(waiting):
            if state_of(rounds[name]) != "Suspended":
                waiting.discard(name)
                resumed_after[name] = round((datetime.now(timezone.utc) - rounds[name].deadline).total_seconds(), 1)
        time.sleep(0.5)
    print(f"\nresumed after the deadline (s): {resumed_after}", file=sys.stderr)
    assert not waiting, f"still suspended {MARGIN_S:g} s after the deadline: {sorted(waiting)}"
    assert max(resumed_after.values()) <= MARGIN_S, resumed_after
    for name, r in rounds.items():
        reason = ResponsesReady.load(r.keyset, flow_run_id=r.run_id).reason
        assert reason == "deadline passed with 2 of 3 answers", (name, reason)
        out = collect_responses.fn(live.url, r.id, CLIENTS, 2, r.probe["deadline"], SIGMA, K, 0.1, False)
        assert {c: a["scores"][0] for c, a in out["accepted"].items()} == {"client-0": 1.0, "client-1": 2.0}, name
        ledger = live.store.read_json(layout.round_key(r.id, "ledger.json"))
        (refused,) = ledger["rejected"]
        assert refused["key"].endswith("responses/client-2.json") and refused["reason"], (name, refused)
        assert "\n" not in refused["reason"] and len(refused["reason"]) <= 600, (name, refused)
        assert ledger["missing"] == ["client-2"] and ledger["unjudged"] == [], name
    empty = live.store.read_json(layout.round_key(rounds["empty (0 bytes)"].id, "ledger.json"))
    assert "empty upload (0 bytes)" in empty["rejected"][0]["reason"]
