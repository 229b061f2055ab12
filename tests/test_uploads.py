"""tasks/uploads.py on a local store: the edge cases of judging (fast; the real S3 server
and the watcher are in tests/test_watcher.py)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from ecos_core.storage import layout
from ecos_core.exchange.auth import enroll, signed_response_bytes
from ecos_core.exchange.protocol import response_json_bytes
from ecos_core.storage.store import Store
from tasks.uploads import Replaced, RoundTerms, accepted_answers, judge, judge_new_uploads

K = 4


@pytest.fixture
def setup(tmp_path):
    store = Store(str(tmp_path / "store"))
    keys = {c: enroll(store, c).key_b64 for c in ("a", "b")}
    terms = RoundTerms.load(store, "r1", ["a", "b"], K, 6.1, datetime.now(timezone.utc) + timedelta(minutes=5))
    return store, keys, terms


def answer(keys, client: str, value: float) -> bytes:
    return signed_response_bytes(response_json_bytes("r1", client, np.full(K, value)), keys[client])


def test_a_crash_between_the_copy_and_the_verdict_still_accepts_the_answer(setup):
    store, keys, terms = setup
    data = answer(keys, "a", 1.0)
    store.write_bytes(layout.response("r1", "a"), data)
    store.write_bytes(layout.accepted("r1", "a"), data)  # the copy was made, the verdict never written
    (verdict,) = judge_new_uploads(store, terms)
    assert verdict["verdict"] == "accepted" and verdict["client_id"] == "a"


def test_an_upload_replaced_after_its_listing_is_not_judged_as_the_listed_version(setup):
    store, keys, terms = setup
    key = layout.response("r1", "a")
    store.write_bytes(key, answer(keys, "a", 1.0))
    listed = store.version(key)
    time.sleep(0.02)
    store.write_bytes(key, b"garbage that replaced it")
    with pytest.raises(Replaced):
        judge(store, key, listed, terms)
    (verdict,) = judge_new_uploads(store, terms)  # the next sweep judges what is there now
    assert verdict["verdict"] == "refused"


def test_a_changed_accepted_copy_is_left_out_not_fatal(setup):
    store, keys, terms = setup
    for c in ("a", "b"):
        store.write_bytes(layout.response("r1", c), answer(keys, c, 1.0))
    judge_new_uploads(store, terms)
    store.write_bytes(layout.accepted("r1", "b"), answer(keys, "a", 5.0))  # tampered with in the bucket
    problems: list[dict] = []
    assert list(accepted_answers(store, terms, problems)) == ["a"]
    assert len(problems) == 1 and "no longer verifies" in problems[0]["reason"]


def test_a_store_error_on_one_upload_does_not_hide_the_others(setup, monkeypatch):
    store, keys, terms = setup
    for c in ("a", "b"):
        store.write_bytes(layout.response("r1", c), answer(keys, c, 1.0))
    real = store.read_bytes

    def flaky(key, max_bytes=None):
        if key == layout.response("r1", "b"):
            raise __import__("ecos_core.storage.store", fromlist=["StoreError"]).StoreError("store unavailable")
        return real(key, max_bytes)

    monkeypatch.setattr(store, "read_bytes", flaky)
    errors: list[str] = []
    new = judge_new_uploads(store, terms, errors)
    assert [v["client_id"] for v in new] == ["a"] and len(errors) == 1 and "not judged yet" in errors[0]
    monkeypatch.setattr(store, "read_bytes", real)
    assert [v["client_id"] for v in judge_new_uploads(store, terms)] == ["b"]  # judged next time


def test_the_collector_reaches_its_deadline_and_ledger_when_one_upload_cannot_be_read(tmp_path, monkeypatch):
    """The store failing on one upload for good: the round is still judged at its deadline
    with the others (today the StoreError ended the collector without a ledger)."""
    import logging

    from ecos_core.storage.store import StoreError
    from tasks import catalog, responses

    monkeypatch.setattr(responses, "get_run_logger", lambda: logging.getLogger("test-uploads"))
    url = str(tmp_path / "store")
    store = catalog.store(url)
    keys = {c: enroll(store, c).key_b64 for c in ("a", "b", "c")}
    for c in keys:
        store.write_bytes(layout.response("r1", c), answer(keys, c, 1.0))
    real = store.read_bytes

    def broken_for_c(key, max_bytes=None):
        if key == layout.response("r1", "c"):
            raise StoreError(f"{store.uri(key)}: store unavailable (InternalError)")
        return real(key, max_bytes)

    monkeypatch.setattr(store, "read_bytes", broken_for_c)
    deadline = (datetime.now(timezone.utc) + timedelta(seconds=1)).isoformat()
    try:
        out = responses.collect_responses.fn(url, "r1", list(keys), 2, deadline, 6.1, K, 0.05, True)
    finally:
        catalog.store.cache_clear()
    assert sorted(out["accepted"]) == ["a", "b"] and out["missing"] == ["c"]
    (unjudged,) = out["unjudged"]
    assert "responses/c.json: not judged yet (StoreError" in unjudged
    assert store.read_json(layout.round_key("r1", "ledger.json"))["unjudged"] == [unjudged]
