"""A whole round against the REAL S3 server: two simulated edge clients, bad uploads
pre-placed in the bucket (each refused with its reason in rounds/<id>/ledger.json, never
used), a client that never answers, and a training run SIGKILLed midway, then resumed.
Fixtures: tests/s3_faults.py."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from s3_faults import (  # noqa: F401 (fixtures are found by name)
    CLIENTS, K, REPO, ROUND, _s3_running, devices, enrollments, inner_scores, reasons_by_key, s3, signed, store_url,
)  # fmt: skip
from ecos_core.storage import layout
from ecos_core.exchange.auth import open_signed_response
from tasks import catalog

pytestmark = pytest.mark.slow


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



def test_a_round_with_real_devices_shows_only_rows_it_can_honestly_compute(round1, store_url, enrollments):
    """Real devices keep their data: no Oracle, no Local, no accuracy on a test split the
    cloud does not have; the report says it is not a simulation and who answered."""
    from flows.round_flow import round_flow

    rid = "f-round-real"
    store = catalog.store(store_url)
    for i, c in enumerate(CLIENTS):
        store.write_bytes(layout.response(rid, c), signed(rid, c, [3.0 + i] * K, enrollments[c].key_b64))
    cfg = ROUND.model_copy(update={"local_baseline": True, "domain_report": True,
                                   "sampling": ROUND.sampling.model_copy(update={"samplers": ("ecos", "oracle", "random")})})
    out = round_flow(cfg, store_url, rid, False, None, "poll")
    methods = {(r["client_id"], r["method"]) for r in out["results"]}
    assert methods == {(c, m) for c in CLIENTS for m in ("ecos", "random")}, methods
    assert all(r["accuracy"] != r["accuracy"] for r in out["results"])  # NaN: not measured in the cloud
    report = store.read_bytes(layout.round_key(rid, "report.md")).decode()
    assert "**Real devices** (2 invited)" in report and "Accuracy not measured here" in report
    assert "## Who answered" in report and out["domains"] == [] and out["manifest"]["simulated"] is False


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
