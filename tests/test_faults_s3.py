"""Faults and bad inputs against the REAL S3 server (rclone serve s3, started by
infra.services for this module on a free port in a temporary run dir, stopped by PID at
the end, also when a test fails).

- a round end to end with its store in the bucket, two simulated edge clients;
- bad uploads pre-placed in the bucket (as an attacker holding bucket credentials would):
  each refused with its reason in rounds/<id>/ledger.json, never used;
- a client uploading twice through its pre-signed PUT URL, uploads after the deadline,
  a client that never answers;
- the S3 server stopped in the middle, and restarted over the same data dir;
- a training run SIGKILLed midway, then resumed.

Collector-level cases call the undecorated task (`collect_responses.fn`) with a plain
logger; where an upload must land at a precise point of the collector's polling, it is
made from a wrapper around the store's `list` (the collector's poll), so the order of
events is deterministic, not a race.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from infra import services  # noqa: E402

from ecos_core import layout, transport  # noqa: E402
from ecos_core.auth import enroll, open_signed_response, registry_key as auth_key, save_enrollment, signed_response_bytes  # noqa: E402
from ecos_core.backbone import FEATURE_DIM, BackboneSpec  # noqa: E402
from ecos_core.config import RoundConfig  # noqa: E402
from ecos_core.protocol import decode_invitation, decode_probe, response_json_bytes  # noqa: E402
from ecos_core.store import StoreError  # noqa: E402
from tasks import catalog  # noqa: E402

pytestmark = pytest.mark.slow

K = 8
SIGMA = 6.1
ROUND = RoundConfig.model_validate(
    {
        "data": {"domain_sizes": {"mnist": 200, "mnistm": 200, "synth": 200, "animal": 200}, "n_client_train": 80,
                 "n_client_test": 80},
        "index": {"k": K, "niter": 10, "nredo": 1, "batch_size": 128},
        "sampling": {"budget": 60, "samplers": ("ecos", "random")},
        "train": {"max_epochs": 2, "max_steps": 10, "batch_size": 32},
        "clients": ("client-0", "client-1"),
        "quorum": 2,
        "sigma": SIGMA,
        "deadline_s": 120,
        "poll_s": 0.3,
        "local_baseline": False,
        "domain_report": False,
    }
)  # fmt: skip
CLIENTS = list(ROUND.clients)
BOUNDED_S = 30.0  # a store operation against a dead server must give up within this


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """rclone's S3 server only; ECOS_S3_* point the project's Store at it."""
    run_dir = tmp_path_factory.mktemp("faults-infra")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ECOS_", "PREFECT_API_"))}
    environ.update(ECOS_INFRA_DIR=str(run_dir), ECOS_S3_PORT=str(_free_port()), ECOS_S3_BUCKET="ecos")
    cfg = services.Config.load(environ, dotenv=run_dir / "no.env")  # the repo's .env must not leak in
    mp = pytest.MonkeyPatch()
    try:
        try:
            rec = services.start("s3", cfg)
        except services.ServiceError as err:
            pytest.fail(f"could not start the S3 server: {err}", pytrace=False)
        key, secret = cfg.credentials(create=False)
        mp.setenv("ECOS_S3_ENDPOINT", cfg.s3_url)
        mp.setenv("ECOS_S3_KEY", key)
        mp.setenv("ECOS_S3_SECRET", secret)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.delenv("ECOS_STORE", raising=False)
        catalog.store.cache_clear()  # Store objects made from now on pick the settings up
        print(f"\nS3 ready in {rec.ready_s:.1f} s on {cfg.s3_url}", file=sys.stderr)
        yield cfg
    finally:
        services.stop("s3", cfg, quiet=True)
        mp.undo()
        catalog.store.cache_clear()


@pytest.fixture(autouse=True)
def _s3_running(request):
    """Tests that stop the server restart it in a finally; this also covers a test that
    died before it could (a no-op when the server runs)."""
    if "s3" in request.fixturenames:
        cfg = request.getfixturevalue("s3")
        if not services._service_running(cfg, "s3"):
            services.start("s3", cfg)


@pytest.fixture
def quiet_tasks(monkeypatch):
    """Task bodies called undecorated (.fn) have no Prefect run context for get_run_logger."""
    logger = logging.getLogger("test-faults-s3")
    monkeypatch.setattr("tasks.responses.get_run_logger", lambda: logger)
    monkeypatch.setattr("tasks.probe.get_run_logger", lambda: logger)


@pytest.fixture(scope="module")
def store_url(s3) -> str:
    return f"s3://{s3.s3_bucket}/faults-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def devices(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults-devices")


@pytest.fixture(scope="module")
def enrollments(store_url, devices) -> dict:
    """Enrolled as a device would be (registry + device copy), so the flow keeps these keys."""
    store = catalog.store(store_url)
    out = {}
    for c in CLIENTS:
        out[c] = enroll(store, c, 50.0)
        save_enrollment(out[c], devices / c / "enrollment.json")
    return out


def signed(round_id: str, claimed: str, scores, key_b64: str) -> bytes:
    return signed_response_bytes(response_json_bytes(round_id, claimed, np.asarray(scores, dtype=float)), key_b64)


def inner_scores(data: bytes) -> list[float]:
    raw = base64.b64decode(json.loads(data)["response"]["scores_f32_b64"])
    return np.frombuffer(raw, dtype="<f4").astype(float).tolist()


def reasons_by_key(ledger: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in ledger["rejected"]:
        out.setdefault(r["key"].rsplit("/", 1)[-1], []).append(r["reason"])
    return out


# ---------------------------------------------------------------- 1 + 2: a whole round on S3, with bad uploads
R1 = "f-round-1"


def _bad_uploads(enr: dict) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, the reason the ledger must give). None of the names is a client's."""
    k0 = enr["client-0"].key_b64
    tampered = json.loads(signed(R1, "client-0", [1.0] * K, k0))
    tampered["response"]["scores_f32_b64"] = base64.b64encode(np.full(K, 40.0, "<f4").tobytes()).decode()
    padded = json.loads(signed(R1, "client-0", [1.0] * K, k0))
    return {
        "forged-mac.json": (json.dumps(tampered).encode(), "bad signature for client 'client-0'"),
        # an enrolled client signs with its own key but claims to be another client
        "impostor.json": (signed(R1, "client-1", [30.0] * K, k0), "bad signature for client 'client-1'"),
        # a genuine, valid client-0 answer that is not stored under client-0's own name
        "stolen-name.json": (signed(R1, "client-0", [31.0] * K, k0), "answered under another name"),
        "wrong-round.json": (signed("other-round", "client-0", [1.0] * K, k0), "is for round 'other-round'"),
        "wrong-length.json": (signed(R1, "client-0", [1.0] * (K + 1), k0), f"{K + 1} scores (k={K + 1}), the probe has {K}"),
        "nan.json": (signed(R1, "client-0", [np.nan] + [1.0] * (K - 1), k0), "NaN or inf"),
        "inf.json": (signed(R1, "client-0", [np.inf] + [1.0] * (K - 1), k0), "NaN or inf"),
        "negative.json": (signed(R1, "client-0", [-1000.0] * K, k0), "below -8σ"),
        "oversized.json": (json.dumps({**padded, "pad": "x" * 70_000}).encode(), "larger than the 65536-byte limit"),
    }  # fmt: skip


@pytest.fixture(scope="module")
def round1(s3, store_url, devices, enrollments):
    from flows.round_flow import round_flow

    store = catalog.store(store_url)
    bad = _bad_uploads(enrollments)
    for name, (data, _) in bad.items():
        store.write_bytes(f"{layout.responses_prefix(R1)}/{name}", data)
    start = time.monotonic()
    out, error = None, None
    try:
        out = round_flow(ROUND, store_url, R1, True, str(devices), "poll")
    except Exception as err:  # noqa: BLE001 - judged by the tests (the steps before it left their objects)
        error = err
    seconds = time.monotonic() - start
    print(f"\nround {R1} on S3: {seconds:.1f} s ({type(error).__name__ if error else 'completed'})", file=sys.stderr)
    return SimpleNamespace(out=out, error=error, bad=bad, seconds=seconds)


def test_round_on_s3_collects_selects_and_trains_both_clients(round1, s3, store_url):
    """Everything up to the report, for both clients, in the bucket."""
    store = catalog.store(store_url)
    prefix = store_url.split("/", 3)[3]
    keys = [layout.round_key(R1, "ledger.json"), layout.probe_json(R1), layout.probe_centroids(R1)]
    for c in CLIENTS:
        keys += [layout.accepted(R1, c), layout.response(R1, c), layout.invitation(R1, c)]
        for m in ROUND.sampling.samplers:
            assert len(store.read_npy(layout.selection(R1, c, m))) == ROUND.sampling.budget, (c, m)
            row = store.read_json(layout.training_row(R1, c, m))
            assert (row["client_id"], row["method"]) == (c, m) and 0 <= row["accuracy"] <= 1
            assert row["proxy_size"] == ROUND.sampling.budget and store.exists(row["model_key"])
            keys.append(row["model_key"])
    for key in keys:  # really in the bucket: the server's data dir holds each object
        assert (s3.s3_data_dir / s3.s3_bucket / prefix / key).is_file(), key
    assert sorted(store.read_json(layout.round_key(R1, "ledger.json"))["accepted"]) == CLIENTS


def test_round_end_to_end_on_s3(round1, s3, store_url):
    assert round1.error is None, f"{type(round1.error).__name__}: {round1.error}"
    store = catalog.store(store_url)
    prefix = store_url.split("/", 3)[3]
    for name in ("report.md", "results.csv", "results.png", "manifest.json", "ledger.json",
                 *(f"accepted/{c}.json" for c in CLIENTS)):  # fmt: skip
        key = layout.round_key(R1, name)
        assert store.exists(key) and store.size(key) > 0, name
        # really in the bucket: the server's data dir holds it
        assert (s3.s3_data_dir / s3.s3_bucket / prefix / key).is_file(), name
    assert store.read_bytes(layout.round_key(R1, "results.png"))[:8] == b"\x89PNG\r\n\x1a\n"
    assert store.read_json(layout.round_key(R1, "manifest.json"))["round_id"] == R1
    results = pd.read_csv(io.BytesIO(store.read_bytes(layout.round_key(R1, "results.csv"))))
    pairs = {(r.client_id, r.method) for r in results.itertuples()}
    assert pairs == {(c, m) for c in CLIENTS for m in ROUND.sampling.samplers}
    assert results["accuracy"].between(0, 1).all()
    assert (results["proxy_size"] == ROUND.sampling.budget).all()
    assert len(round1.out["results"]) == len(pairs)
    for c in CLIENTS:
        for m in ROUND.sampling.samplers:
            assert len(store.read_npy(layout.selection(R1, c, m))) == ROUND.sampling.budget


def test_bad_uploads_are_ledgered_with_reasons_and_never_used(round1, store_url, enrollments):
    store = catalog.store(store_url)
    ledger = store.read_json(layout.round_key(R1, "ledger.json"))
    assert sorted(ledger["accepted"]) == CLIENTS and ledger["missing"] == []
    reasons = reasons_by_key(ledger)
    assert set(reasons) == set(round1.bad), reasons  # every bad upload, and nothing else, refused
    for name, (_, why) in round1.bad.items():
        assert any(why in r for r in reasons[name]), (name, reasons[name])
    # what was used is the real clients' own uploads, signed with their keys
    bad_bytes = {data for data, _ in round1.bad.values()}
    for c in CLIENTS:
        used = store.read_bytes(layout.accepted(R1, c))
        assert used == store.read_bytes(layout.response(R1, c)) and used not in bad_bytes
        doc = json.loads(open_signed_response(used, c, {c: enrollments[c].key_b64}.get))  # its own key's MAC
        assert doc["client_id"] == c and doc["round_id"] == R1
        assert not {40.0, 30.0, 31.0} & set(inner_scores(used))


# ---------------------------------------------------------------- 4: a client that never answers
def test_client_that_never_answers_quorum_not_met(round1, store_url, devices, enrollments):
    """client-0's genuine answer is in the bucket, client-1 never answers: QuorumNotMet
    at the deadline, with the counts, the quorum and the missing client in the message."""
    from flows.round_flow import round_flow
    from tasks.responses import QuorumNotMet

    rid = "f-round-4"
    store = catalog.store(store_url)
    store.write_bytes(layout.response(rid, "client-0"), signed(rid, "client-0", [2.0] * K, enrollments["client-0"].key_b64))
    cfg = ROUND.model_copy(update={"deadline_s": 2.0})
    start = time.monotonic()
    with pytest.raises(QuorumNotMet) as err:
        round_flow(cfg, store_url, rid, False, str(devices), "poll")
    msg = str(err.value)
    assert "1 of 2 clients answered" in msg and "quorum is 2" in msg and "missing ['client-1']" in msg, msg
    ledger = store.read_json(layout.round_key(rid, "ledger.json"))
    assert ledger["missing"] == ["client-1"] and list(ledger["accepted"]) == ["client-0"] and ledger["rejected"] == []
    assert not store.exists(layout.selection(rid, "client-0", "ecos"))  # the round stopped there
    assert time.monotonic() - start < 60


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
        f"{unit.store.uri(layout.response(rid, 'client-0'))}: duplicate upload from 'client-0'; the first one is used"
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
    probe, inv = publish(unit, rid, 1.0)
    time.sleep(max(0.0, (datetime.fromisoformat(probe["deadline"]) - datetime.now(timezone.utc)).total_seconds()) + 3.5)
    with pytest.raises(transport.TransportError) as err:
        transport.put(inv["client-0"].response_url, signed(rid, "client-0", [1.0] * K, unit.keys["client-0"]))
    assert "X-Amz-Signature" not in str(err.value)  # the signature is never printed
    assert not unit.store.exists(layout.response(rid, "client-0"))


def test_presigned_put_after_the_deadline_says_the_deadline_passed(unit, quiet_tasks):
    rid = f"f-late2-{uuid.uuid4().hex[:6]}"
    probe, inv = publish(unit, rid, 1.0)
    # the URLs outlive the deadline by ≤ 3 s (whole-second signing); lateness itself is judged by the collector
    time.sleep(max(0.0, (datetime.fromisoformat(probe["deadline"]) - datetime.now(timezone.utc)).total_seconds()) + 3.5)
    with pytest.raises(transport.TransportError, match="deadline"):
        transport.put(inv["client-0"].response_url, signed(rid, "client-0", [1.0] * K, unit.keys["client-0"]))


def test_presigned_put_before_the_deadline_is_accepted(unit, quiet_tasks):
    rid = f"f-ontime-{uuid.uuid4().hex[:6]}"
    probe, inv = publish(unit, rid, 2.0)
    deadline = datetime.fromisoformat(probe["deadline"])
    time.sleep(max(0.0, (deadline - datetime.now(timezone.utc)).total_seconds() - 0.35))
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


# ---------------------------------------------------------------- 6: training killed midway
_TRAIN_SCRIPT = """
import json, sys
from ecos_core.config import RoundConfig
from flows.train_flow import train_flow
cfg = RoundConfig.model_validate_json(sys.argv[1])
train_flow(cfg, sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4]), sys.argv[5])
"""


def test_training_killed_midway_resumes_without_retraining(round1, store_url, tmp_path, monkeypatch):
    import tasks.training
    from flows.train_flow import train_flow

    rid = "f-train-6"
    store = catalog.store(store_url)
    selections = []
    for c in CLIENTS:  # the proxy sets of round 1, as this round's selections
        for m in ROUND.sampling.samplers:
            store.write_bytes(layout.selection(rid, c, m), store.read_bytes(layout.selection(R1, c, m)))
            selections.append({"client_id": c, "method": m, "key": layout.selection(rid, c, m)})
    local = list(CLIENTS)
    pairs = [(s["client_id"], s["method"]) for s in selections] + [(c, "local") for c in local]
    row_keys = {p: layout.training_row(rid, *p) for p in pairs}

    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_LOGGING_LEVEL="WARNING")
    log = tmp_path / "train.log"
    t0 = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", _TRAIN_SCRIPT, ROUND.model_dump_json(), rid, json.dumps(selections),
                                 json.dumps(local), store_url], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    try:
        done: list = []
        while not done:
            assert proc.poll() is None, f"the training run ended (rc {proc.returncode}) before any row:\n{log.read_text()[-3000:]}"
            assert time.monotonic() - t0 < 180, "no training row after 180 s"
            store.invalidate()
            done = [p for p in pairs if store.exists(row_keys[p])]
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the run and anything it started (its own session)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    killed_after = time.monotonic() - t0
    store.invalidate()
    finished = [p for p in pairs if store.exists(row_keys[p])]
    assert 1 <= len(finished) < len(pairs), f"killed after {finished}: nothing left to resume"
    rows_before = {p: store.read_bytes(row_keys[p]) for p in finished}
    models_before = {}
    for p in finished:
        info = store.fs.info(store.path(json.loads(rows_before[p])["model_key"]))
        models_before[p] = (info["ETag"], info["LastModified"])

    fits = []
    real_fit = tasks.training._fit
    monkeypatch.setattr(tasks.training, "_fit", lambda *a: (fits.append(1), real_fit(*a))[1])
    t1 = time.monotonic()
    runs = train_flow(ROUND, rid, selections, local, store_url)
    resumed = time.monotonic() - t1
    print(f"\ntraining: killed after {killed_after:.1f} s with {len(finished)}/{len(pairs)} rows; resumed in "
          f"{resumed:.1f} s", file=sys.stderr)  # fmt: skip
    assert len(fits) == len(pairs) - len(finished)  # only the missing ones were trained
    assert [(r["client_id"], r["method"]) for r in runs] == pairs
    store.invalidate()
    for p in finished:
        assert store.read_bytes(row_keys[p]) == rows_before[p], p
        info = store.fs.info(store.path(json.loads(rows_before[p])["model_key"]))
        assert (info["ETag"], info["LastModified"]) == models_before[p], p
    for p in pairs:
        row = store.read_json(row_keys[p])
        assert row["client_id"] == p[0] and row["method"] == p[1] and store.exists(row["model_key"])
