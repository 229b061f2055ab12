"""Collector-level faults against the REAL S3 server: a client uploading twice through
its pre-signed PUT URL, forgeries, oversized uploads, uploads after the deadline, the S3
server stopped in the middle and restarted over the same data dir, an interrupted publish.

These call the undecorated tasks (`collect_responses.fn`, `publish_probe.fn`) with a plain
logger; where an upload must land at a precise point of the collector's polling, it is
made from a wrapper around the store's `list` (the collector's poll), so the order of
events is deterministic, not a race. Fixtures: tests/s3_faults.py."""

from __future__ import annotations

import hashlib
import json
import sys
import time
import uuid
from datetime import datetime, timezone
from types import SimpleNamespace

import numpy as np
import pytest

from s3_faults import (  # noqa: F401 (fixtures are found by name)
    BOUNDED_S, CLIENTS, K, SIGMA, _s3_running, quiet_tasks, reasons_by_key, s3, signed,
)  # fmt: skip
from infra import services
from ecos_core.storage import layout
from ecos_core.exchange import transport
from ecos_core.exchange.auth import enroll, registry_key as auth_key
from ecos_core.embedding.feature_space import FEATURE_DIM, BackboneSpec
from ecos_core.exchange.protocol import decode_invitation, decode_probe
from ecos_core.storage.store import StoreError
from tasks import catalog

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------- collector-level cases (own store prefix)
@pytest.fixture(scope="module")
def unit(s3):
    """A store with enrolled clients and a small fake pool index, for publish_probe.fn."""
    url = f"s3://{s3.s3_bucket}/faults-unit-{uuid.uuid4().hex[:10]}"
    store = catalog.store(url)
    keys = {c: enroll(store, c).key_b64 for c in CLIENTS}
    centroids = np.random.default_rng(0).standard_normal((K, FEATURE_DIM)).astype("<f4")
    store.write_npy(layout.index_part("fake-index", "centroids.npy"), centroids)
    store.write_npy(layout.index_part("fake-index", "assignments.npy"), np.arange(40) % K)
    store.write_npy(layout.index_part("fake-index", "radii.npy"), np.full(K, 2.0, "<f4"))
    return SimpleNamespace(url=url, store=store, keys=keys)


def publish(unit, rid: str, deadline_s: float, clients=CLIENTS) -> tuple[dict, dict]:
    from tasks.probe import publish_probe

    probe = publish_probe.fn(unit.url, rid, "fake-index", BackboneSpec().model_dump(mode="json"), SIGMA, 1e-5,
                             deadline_s, list(clients))  # fmt: skip
    invites = {c: decode_invitation(unit.store.read_bytes(layout.invitation(rid, c)), c) for c in clients}
    return probe, invites


def collect(unit, rid: str, probe: dict, clients=CLIENTS, quorum: int = 1, wait: bool = True, poll_s: float = 0.05):
    from tasks.responses import collect_responses

    return collect_responses.fn(unit.url, rid, list(clients), quorum, probe["deadline"], SIGMA, probe["k"], poll_s, wait)


def hook_list(monkeypatch, store, before_call: dict):
    """Run before_call[n]() just before the collector's n-th listing of the store."""
    real, calls = store.list, [0]

    def listing(prefix):
        calls[0] += 1
        if calls[0] in before_call:
            before_call[calls[0]]()
        return real(prefix)

    monkeypatch.setattr(store, "list", listing)
    return calls


def test_rerun_with_another_coverage_rule_is_refused(unit, quiet_tasks):
    """Clients count under the published probe's rule; a re-run that would count differently fails clearly."""
    from tasks.probe import publish_probe

    rid = f"f-rule-{uuid.uuid4().hex[:6]}"
    probe, _ = publish(unit, rid, 60)
    assert decode_probe(unit.store.read_bytes(layout.probe_json(rid)),
                        unit.store.read_bytes(layout.probe_centroids(rid)))[0].radii() is not None  # fmt: skip
    with pytest.raises(ValueError, match="uses the ball coverage rule, this run asks for 'nearest'"):
        publish_probe.fn(unit.url, rid, "fake-index", BackboneSpec().model_dump(mode="json"), SIGMA, 1e-5, 60,
                         list(CLIENTS), "nearest")  # fmt: skip
    assert publish_probe.fn(unit.url, rid, "fake-index", BackboneSpec().model_dump(mode="json"), SIGMA, 1e-5, 60,
                            list(CLIENTS), "ball")["deadline"] == probe["deadline"]  # fmt: skip


def test_duplicate_upload_through_presigned_url_first_answer_used(unit, quiet_tasks, monkeypatch):
    rid = f"f-dup-{uuid.uuid4().hex[:6]}"
    probe, inv = publish(unit, rid, 60)
    first, second = (signed(rid, "client-0", [v] * K, unit.keys["client-0"]) for v in (1.0, 2.0))
    transport.put(inv["client-0"].response_url, first)

    def second_upload():
        transport.put(inv["client-0"].response_url, second)  # rclone does not refuse overwrites
        assert unit.store.read_bytes(layout.response(rid, "client-0")) == second
        transport.put(inv["client-1"].response_url, signed(rid, "client-1", [3.0] * K, unit.keys["client-1"]))

    calls = hook_list(monkeypatch, unit.store, {2: second_upload})
    out = collect(unit, rid, probe)
    assert calls[0] >= 2  # the second upload happened while the collector ran
    assert out["accepted"]["client-0"]["scores"] == [1.0] * K
    assert unit.store.read_bytes(layout.accepted(rid, "client-0")) == first
    ledger = unit.store.read_json(layout.round_key(rid, "ledger.json"))
    assert sorted(ledger["accepted"]) == CLIENTS
    assert [r["reason"] for r in ledger["rejected"]] == [
        f"{unit.store.uri(layout.response(rid, 'client-0'))}: duplicate upload from 'client-0' (differs from the accepted answer); the first one is used"
    ]


def test_duplicate_upload_seen_by_a_rerun_of_the_collector_keeps_the_first(unit, quiet_tasks):
    """The docstring: "The accepted bytes are copied to rounds/<id>/accepted/ (cloud-only),
    so a later overwrite of the upload changes nothing; it is recorded as a duplicate"."""
    rid = f"f-dup2-{uuid.uuid4().hex[:6]}"
    probe, inv = publish(unit, rid, 60, ["client-0"])
    first, second = (signed(rid, "client-0", [v] * K, unit.keys["client-0"]) for v in (1.0, 2.0))
    transport.put(inv["client-0"].response_url, first)
    collect(unit, rid, probe, ["client-0"], wait=False)
    assert unit.store.read_bytes(layout.accepted(rid, "client-0")) == first
    transport.put(inv["client-0"].response_url, second)
    assert unit.store.read_bytes(layout.response(rid, "client-0")) == second
    out = collect(unit, rid, probe, ["client-0"], wait=False)  # e.g. the round re-run after a crash
    assert unit.store.read_bytes(layout.accepted(rid, "client-0")) == first
    assert out["accepted"]["client-0"]["scores"] == [1.0] * K
    assert any("duplicate" in r["reason"] for r in out["rejected"])


def test_forgery_under_the_victims_name_does_not_lock_the_victim_out(unit, quiet_tasks, monkeypatch):
    """client-0 (enrolled) writes, under client-1's own key name, an answer claiming to be
    client-1 (signed with client-0's key). The collector must refuse it (bad signature)
    and still accept client-1's genuine answer, which overwrites it later."""
    rid = f"f-victim-{uuid.uuid4().hex[:6]}"
    probe, inv = publish(unit, rid, 4)
    forged = signed(rid, "client-1", [30.0] * K, unit.keys["client-0"])
    unit.store.write_bytes(layout.response(rid, "client-1"), forged)
    transport.put(inv["client-0"].response_url, signed(rid, "client-0", [1.0] * K, unit.keys["client-0"]))
    genuine = signed(rid, "client-1", [2.0] * K, unit.keys["client-1"])
    hook_list(monkeypatch, unit.store, {2: lambda: transport.put(inv["client-1"].response_url, genuine)})
    out = collect(unit, rid, probe, quorum=1)
    reasons = reasons_by_key(unit.store.read_json(layout.round_key(rid, "ledger.json")))
    assert any("bad signature for client 'client-1'" in r for r in reasons["client-1.json"])
    assert sorted(out["accepted"]) == CLIENTS, reasons
    assert unit.store.read_bytes(layout.accepted(rid, "client-1")) == genuine


def test_oversized_upload_is_ledgered_once(unit, quiet_tasks, monkeypatch):
    rid = f"f-big-{uuid.uuid4().hex[:6]}"
    probe, inv = publish(unit, rid, 60, ["client-0"])
    unit.store.write_bytes(f"{layout.responses_prefix(rid)}/big.json", b"{" + b" " * 70_000 + b"}")
    answer = signed(rid, "client-0", [1.0] * K, unit.keys["client-0"])
    hook_list(monkeypatch, unit.store, {4: lambda: transport.put(inv["client-0"].response_url, answer)})
    out = collect(unit, rid, probe, ["client-0"])
    assert list(out["accepted"]) == ["client-0"]
    reasons = reasons_by_key(unit.store.read_json(layout.round_key(rid, "ledger.json")))
    assert "larger than the 65536-byte limit" in reasons["big.json"][0]
    assert len(reasons["big.json"]) == 1, reasons["big.json"]


# ---------------------------------------------------------------- 3: after the deadline
def test_presigned_put_after_the_deadline_is_refused(unit, quiet_tasks):
    rid = f"f-late-{uuid.uuid4().hex[:6]}"
    probe, inv = publish(unit, rid, 2.0)
    time.sleep(max(0.0, (datetime.fromisoformat(probe["deadline"]) - datetime.now(timezone.utc)).total_seconds()) + 3.5)
    with pytest.raises(transport.TransportError) as err:
        transport.put(inv["client-0"].response_url, signed(rid, "client-0", [1.0] * K, unit.keys["client-0"]))
    assert "X-Amz-Signature" not in str(err.value)  # the signature is never printed
    assert not unit.store.exists(layout.response(rid, "client-0"))


def test_presigned_put_after_the_deadline_says_the_deadline_passed(unit, quiet_tasks):
    rid = f"f-late2-{uuid.uuid4().hex[:6]}"
    probe, inv = publish(unit, rid, 2.0)
    # the URLs expire at the deadline itself (tests/test_watcher.py checks deadline + 0.4 s)
    time.sleep(max(0.0, (datetime.fromisoformat(probe["deadline"]) - datetime.now(timezone.utc)).total_seconds()) + 1.0)
    with pytest.raises(transport.TransportError, match="deadline"):
        transport.put(inv["client-0"].response_url, signed(rid, "client-0", [1.0] * K, unit.keys["client-0"]))


def test_presigned_put_before_the_deadline_is_accepted(unit, quiet_tasks):
    rid = f"f-ontime-{uuid.uuid4().hex[:6]}"
    probe, inv = publish(unit, rid, 4.0)  # the deadline is rounded down to a whole second: 3-4 s from now
    deadline = datetime.fromisoformat(probe["deadline"])
    time.sleep(max(0.0, (deadline - datetime.now(timezone.utc)).total_seconds() - 0.5))
    assert datetime.now(timezone.utc) < deadline
    transport.put(inv["client-0"].response_url, signed(rid, "client-0", [1.0] * K, unit.keys["client-0"]))
    assert unit.store.exists(layout.response(rid, "client-0"))


def test_object_placed_after_the_deadline_is_recorded_late(unit, quiet_tasks, monkeypatch):
    """client-0 answers on time; client-1's answer is written with bucket credentials
    after the deadline, while the collector still polls (it waits for client-1)."""
    rid = f"f-late3-{uuid.uuid4().hex[:6]}"
    probe, inv = publish(unit, rid, 4.0)  # room for client-0's on-time write on a busy machine
    unit.store.write_bytes(layout.response(rid, "client-0"), signed(rid, "client-0", [1.0] * K, unit.keys["client-0"]))
    deadline = datetime.fromisoformat(probe["deadline"])
    placed = []

    def place_late():
        if datetime.now(timezone.utc) >= deadline and not placed:
            unit.store.write_bytes(layout.response(rid, "client-1"), signed(rid, "client-1", [2.0] * K, unit.keys["client-1"]))
            placed.append(datetime.now(timezone.utc))

    real = unit.store.list
    monkeypatch.setattr(unit.store, "list", lambda prefix: (place_late(), real(prefix))[1])
    out = collect(unit, rid, probe, quorum=1, poll_s=0.2)
    assert placed and placed[0] > deadline  # it really arrived after the deadline
    ledger = unit.store.read_json(layout.round_key(rid, "ledger.json"))
    assert list(ledger["accepted"]) == ["client-0"] and list(out["accepted"]) == ["client-0"]
    assert ledger["missing"] == ["client-1"]
    assert any("arrived after the deadline" in r for r in reasons_by_key(ledger)["client-1.json"])


# ---------------------------------------------------------------- 5: the S3 server stopped in the middle
def test_s3_stopped_mid_round_fails_fast_and_restart_keeps_valid_objects(s3, unit, quiet_tasks, monkeypatch):
    """The server dies while the collector polls: the collector fails within a bounded
    time (it does not take a dead server for "no answers yet" and wait for the
    deadline), a Store read fails naming the URL; after a restart over the same data
    dir, everything stored before is there, byte for byte, and the probe validates."""
    rid = f"f-down-{uuid.uuid4().hex[:6]}"
    probe, _ = publish(unit, rid, 60)
    store = unit.store
    keys = [layout.probe_json(rid), layout.probe_centroids(rid), *(layout.invitation(rid, c) for c in CLIENTS),
            *(auth_key(c) for c in CLIENTS)]  # fmt: skip
    before = {k: store.read_bytes(k) for k in keys}
    timings = {}
    try:
        hook_list(monkeypatch, store, {2: lambda: services.stop("s3", s3)})
        t0 = time.monotonic()
        with pytest.raises(Exception) as err:
            collect(unit, rid, probe)
        timings["collect"] = time.monotonic() - t0
        assert not services._service_running(s3, "s3")  # it really was stopped mid-collection
        assert "QuorumNotMet" not in type(err.value).__name__, err.value
        assert timings["collect"] < BOUNDED_S
        monkeypatch.undo()
        t0 = time.monotonic()
        with pytest.raises(Exception) as err:
            store.read_bytes(layout.probe_json(rid))
        timings["read"] = time.monotonic() - t0
        msg = str(err.value)
        names_url = store.url in msg or f"{s3.s3_url}/{store.path(layout.probe_json(rid))}" in msg
        assert isinstance(err.value, StoreError) or names_url, f"{type(err.value).__name__}: {msg}"
        assert timings["read"] < BOUNDED_S
    finally:
        services.start("s3", s3)
    print(f"\nS3 down: collector failed after {timings['collect']:.1f} s, read after {timings['read']:.1f} s",
          file=sys.stderr)  # fmt: skip
    after = {k: store.read_bytes(k) for k in keys}
    assert after == before
    got, centroids = decode_probe(after[keys[0]], after[keys[1]], rid, expected_round=rid)  # hash checked
    assert got.k == K and centroids.shape == (K, FEATURE_DIM)


def test_s3_down_is_a_retryable_store_error(s3, unit):
    from tasks.common import RETRYABLE

    unit.store.write_bytes("probe-me.json", b"{}")
    try:
        services.stop("s3", s3)
        with pytest.raises(Exception) as err:
            unit.store.read_bytes("probe-me.json")
    finally:
        services.start("s3", s3)
    assert isinstance(err.value, RETRYABLE), type(err.value).__mro__
    assert isinstance(err.value, StoreError) and unit.url in str(err.value)


def _publish_killed_after_centroids(s3, unit, monkeypatch, rid: str) -> None:
    """publish_probe with the S3 server stopped right after centroids.npy is written."""
    real = unit.store.write_bytes

    def write_then_die(key, data, overwrite=True):
        real(key, data, overwrite)
        if key == layout.probe_centroids(rid):
            services.stop("s3", s3)

    monkeypatch.setattr(unit.store, "write_bytes", write_then_die)
    try:
        t0 = time.monotonic()
        with pytest.raises(Exception):
            publish(unit, rid, 60)
        assert time.monotonic() - t0 < BOUNDED_S
    finally:
        monkeypatch.setattr(unit.store, "write_bytes", real)
        services.start("s3", s3)


def test_publish_interrupted_leaves_no_valid_looking_probe(s3, unit, quiet_tasks, monkeypatch):
    rid = f"f-half-{uuid.uuid4().hex[:6]}"
    _publish_killed_after_centroids(s3, unit, monkeypatch, rid)
    assert unit.store.exists(layout.probe_centroids(rid))  # the interruption really came after it
    assert not unit.store.exists(layout.probe_json(rid))  # so nobody sees a probe
    assert unit.store.list(layout.round_key(rid, "invites")) == []  # and no client was invited


def test_publish_resumes_after_an_interruption(s3, unit, quiet_tasks, monkeypatch):
    rid = f"f-half2-{uuid.uuid4().hex[:6]}"
    _publish_killed_after_centroids(s3, unit, monkeypatch, rid)
    probe, inv = publish(unit, rid, 60)  # the task's retry, or the round re-run
    npy = unit.store.read_bytes(layout.probe_centroids(rid))
    assert decode_probe(unit.store.read_bytes(layout.probe_json(rid)), npy, rid, rid)[0].k == K
    assert hashlib.sha256(npy).hexdigest() == json.loads(unit.store.read_bytes(layout.probe_json(rid)))["centroids_sha256"]
    assert set(inv) == set(CLIENTS)


