"""The round flow end to end through Prefect (ephemeral mode) on a tiny built-in pool,
with a real client process answering through the store."""

from __future__ import annotations

import hashlib
import json
import re

import pandas as pd
import pytest

from ecos_core.storage import layout
from ecos_core.config import RoundConfig
from ecos_core.exchange.auth import enroll, signed_response_bytes
from ecos_core.exchange.protocol import response_json_bytes
from ecos_core.storage.store import Store
from tests_helpers_tiny import TINY_ROUND

TINY = RoundConfig.model_validate({**TINY_ROUND, "local_baseline": True, "domain_report": True})


@pytest.fixture(scope="module")
def store_url(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def first_round(store_url, tmp_path_factory):
    from flows.round_flow import round_flow

    return round_flow(TINY, store_url, "t-round-1", True, str(tmp_path_factory.mktemp("devices")))


def test_round_runs_end_to_end(first_round, store_url):
    results = pd.DataFrame(first_round["results"])
    assert set(results["method"]) == {"ecos", "oracle", "random", "kcenter", "local"}
    sampled = results[results["method"] != "local"]
    assert (sampled["proxy_size"] == TINY.sampling.budget).all()
    assert results["accuracy"].between(0, 1).all()
    ecos = results.set_index("method").loc["ecos"]
    assert ecos["epsilon"] == pytest.approx(0.584, abs=0.002)
    assert 0 < ecos["bytes_up"] <= 4 * TINY.index.k + 1024
    store = Store(store_url)
    # the combined feature space (the default): the probe ships the adapted CNN, pinned by its hash
    probe, weights = json.loads(store.read_bytes(layout.probe_json("t-round-1"))), store.read_bytes(layout.probe_adapted("t-round-1"))
    assert probe["dim"] == 1280 + 128 and probe["adapted_sha256"] == hashlib.sha256(weights).hexdigest()
    assert json.loads(store.read_bytes(layout.invitation("t-round-1", "client-0")))["adapted_url"]
    assert 0 < ecos["bytes_down"] <= 4 * TINY.index.k * (1280 + 128) + len(weights) + 4096
    for name in ("report.md", "results.csv", "results.png", "manifest.json", "ledger.json"):
        assert store.exists(layout.round_key("t-round-1", name)), name
    ledger = store.read_json(layout.round_key("t-round-1", "ledger.json"))
    assert list(ledger["accepted"]) == ["client-0"] and ledger["rejected"] == []
    report = store.read_bytes(layout.round_key("t-round-1", "report.md")).decode().splitlines()
    assert re.fullmatch(r"ECOS \d+\.\d % vs Random \d+\.\d % \([+-]\d+\.\d\) at ε = 0\.\d{3}; \d+\.\d (below|above) the "
                        r"non-private Oracle\.  ", report[2]), report[2]  # the first thing a person reads
    text = "\n".join(report)
    assert "**Simulation**" in text and "| client-0    | accepted |" in text and "Oracle: the same rule" in text
    assert "## Privacy spent by each device" in text
    assert "Feature space: mobilenet_v2 beside a CNN trained on annotated pool images, shipped in the probe (1408-d)" in text
    assert len(first_round["domains"]) == len(TINY.data.domains)


def test_every_flow_run_is_named_after_what_it_does(first_round):
    """The UI's run list reads without opening each run: no random adjective-animal names."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        names = {r.name for r in client.read_flow_runs(limit=200)}
    assert {"round-t-round-1", "train-t-round-1", f"index-builtin-combined-k{TINY.index.k}"} <= names, names


def test_second_round_reuses_cached_features_and_index(first_round, store_url, tmp_path):
    from flows.round_flow import round_flow

    cfg = TINY.model_copy(update={"domain_report": False, "local_baseline": False})
    out = round_flow(cfg, store_url, "t-round-2", True, str(tmp_path))
    report = Store(store_url).read_bytes(layout.round_key("t-round-2", "report.md")).decode()
    assert "Feature cache: hit for" in report
    # same inputs, same seed: the same proxy sets
    for method in ("ecos", "kcenter", "random"):
        a = Store(store_url).read_npy(layout.selection("t-round-1", "client-0", method))
        b = Store(store_url).read_npy(layout.selection("t-round-2", "client-0", method))
        assert a.tolist() == b.tolist(), method
    assert out["steps"]["features"] < 5


def test_noise_above_every_count_leaves_the_budget_unspent(first_round, store_url, tmp_path):
    """σ so large that no cluster passes the threshold (and the floor is 3σ): ECOS ("stop") selects nothing,
    the round still completes, and the report says how much budget was left."""
    from flows.round_flow import round_flow

    cfg = TINY.model_copy(update={"domain_report": False, "local_baseline": False, "sigma": 200.0,
                                  "sampling": TINY.sampling.model_copy(update={"samplers": ("ecos", "random"),
                                                                               "floor_sigmas": 3.0})})  # fmt: skip
    out = round_flow(cfg, store_url, "t-round-empty", True, str(tmp_path))
    rows = pd.DataFrame(out["results"]).set_index("method")
    assert rows.loc["ecos", "proxy_size"] == 0 and rows.loc["ecos", "unspent"] == TINY.sampling.budget
    assert pd.isna(rows.loc["ecos", "accuracy"])
    assert rows.loc["random", "proxy_size"] == TINY.sampling.budget and rows.loc["random", "unspent"] == 0
    assert Store(store_url).exists(layout.round_key("t-round-empty", "results.png"))


def test_the_round_reads_the_scores_through_the_cluster_hierarchy(first_round, store_url, tmp_path, monkeypatch):
    """sampling.group_sizes: the flow's ECOS selection goes through ecos_core.sampling.hierarchy at the
    round's σ with the index's groups; the Oracle's exact counts need no hierarchy (identity)."""
    from ecos_core.sampling import samplers
    from flows.round_flow import round_flow

    calls, real = [], samplers.grouped_estimate

    def spy(scores, levels, sigma, group_sigmas):  # noqa: ANN001, ANN202
        calls.append((len(scores), [int(g.max()) + 1 for g in levels], sigma, group_sigmas))
        return real(scores, levels, sigma, group_sigmas)

    monkeypatch.setattr(samplers, "grouped_estimate", spy)
    sampling = TINY.sampling.model_copy(update={"samplers": ("ecos", "oracle"), "group_sizes": (2.0, 4.0),
                                                "group_sigmas": 1.5})  # fmt: skip
    cfg = TINY.model_copy(update={"domain_report": False, "local_baseline": False, "sampling": sampling})
    out = round_flow(cfg, store_url, "t-round-groups", True, str(tmp_path))
    assert calls == [(TINY.index.k, [4, 2], cfg.sigma, 1.5)]  # K=8 clusters in 4, then 2 groups
    assert (pd.DataFrame(out["results"])["proxy_size"] == TINY.sampling.budget).all()
    store = Store(store_url)
    oracle = [store.read_npy(layout.selection(r, "client-0", "oracle")).tolist() for r in ("t-round-1", "t-round-groups")]
    assert oracle[0] == oracle[1]


def test_bad_uploads_are_ledgered_and_never_used(first_round, store_url, tmp_path):
    """A forged and a malformed upload arrive before the real client: both refused with a
    reason, the round goes on with the real answer."""
    from flows.round_flow import round_flow

    store = Store(store_url)
    rid = "t-round-3"
    mallory = enroll(store, "mallory")
    signed = signed_response_bytes(response_json_bytes(rid, "mallory", [1.0] * TINY.index.k), mallory.key_b64)
    store.write_bytes(layout.response(rid, "mallory"), signed)  # enrolled, but not invited to this round
    store.write_bytes(layout.response(rid, "client-x"), b'{"round_id": "t-round-3", "scores": "NaN"}')
    forged = signed_response_bytes(response_json_bytes(rid, "client-0", [5.0] * TINY.index.k), mallory.key_b64)
    store.write_bytes(layout.response(rid, "client-0x"), forged)  # claims to be client-0, signed with another key
    cfg = TINY.model_copy(update={"domain_report": False, "local_baseline": False, "sampling": TINY.sampling.model_copy(update={"samplers": ("ecos",)})})
    round_flow(cfg, store_url, rid, True, str(tmp_path))
    ledger = store.read_json(layout.round_key(rid, "ledger.json"))
    reasons = json.dumps(ledger["rejected"])
    assert "unknown client" in reasons and "bad signature" in reasons and "client-x.json" in reasons
    assert list(ledger["accepted"]) == ["client-0"]


def test_round_without_answers_fails_at_the_deadline(first_round, store_url, tmp_path):
    from flows.round_flow import round_flow
    from tasks.responses import QuorumNotMet

    cfg = TINY.model_copy(update={"deadline_s": 2.0, "domain_report": False})
    with pytest.raises(QuorumNotMet, match="0 of 1 clients answered"):
        round_flow(cfg, store_url, "t-round-4", False, str(tmp_path))
    ledger = Store(store_url).read_json(layout.round_key("t-round-4", "ledger.json"))
    assert ledger["missing"] == ["client-0"]


def test_labels_export_import_train_through_the_cli(first_round, store_url, tmp_path):
    """Selective manual labeling of a round's proxy set: export, annotate, import, train."""
    from typer.testing import CliRunner

    from ecos_cli.main import app

    runner = CliRunner()
    common = ["--round", "t-round-1", "--client", "client-0", "--method", "ecos", "--store", store_url]
    export = tmp_path / "to-label.csv"
    out = runner.invoke(app, ["labels", "export", str(export), *common, "--images", str(tmp_path / "png")])
    assert out.exit_code == 0, out.output
    frame = pd.read_csv(export, dtype=str, keep_default_na=False)
    assert list(frame.columns) == ["sample_id", "image_uri", "label"] and len(frame) == TINY.sampling.budget
    assert all((tmp_path / "png" / p.split("/")[-1]).is_file() for p in frame["image_uri"])
    store = Store(store_url)
    key = layout.labels("t-round-1", "client-0", "ecos")

    # bad files are refused and store nothing
    for bad_rows, words in ((frame.iloc[1:], "no label"), (pd.concat([frame, frame.iloc[:1]]), "duplicate")):
        bad = bad_rows.assign(label="3")
        bad.to_csv(tmp_path / "bad.csv", index=False)
        out = runner.invoke(app, ["labels", "import", str(tmp_path / "bad.csv"), *common])
        assert out.exit_code != 0 and words in str(out.exception) + out.output
    frame.assign(label="12").to_csv(tmp_path / "bad.csv", index=False)
    out = runner.invoke(app, ["labels", "import", str(tmp_path / "bad.csv"), *common])
    assert out.exit_code != 0 and "0..9" in str(out.exception) + out.output
    assert not store.exists(key)
    out = runner.invoke(app, ["labels", "train", *common])
    assert out.exit_code != 0 and "labels import" in str(out.exception)

    # the annotators label everything "7": the model trained on it must say so
    frame.assign(label="7").to_csv(tmp_path / "labelled.csv", index=False)
    out = runner.invoke(app, ["labels", "import", str(tmp_path / "labelled.csv"), *common])
    assert out.exit_code == 0, out.output
    assert (store.read_npy(key) == 7).all()
    out = runner.invoke(app, ["labels", "train", *common])
    assert out.exit_code == 0, out.output
    row = store.read_json(layout.training_row("t-round-1", "client-0", "ecos-annotated"))
    assert row["proxy_size"] == TINY.sampling.budget and row["accuracy"] < 0.5
    assert "agreement with the pool's ground truth" in out.output
    # corrected labels: the import drops the model trained on the old ones, and training redoes it
    frame.assign(label=[str(i % 10) for i in range(len(frame))]).to_csv(tmp_path / "fixed.csv", index=False)
    assert runner.invoke(app, ["labels", "import", str(tmp_path / "fixed.csv"), *common]).exit_code == 0
    assert not store.exists(layout.training_row("t-round-1", "client-0", "ecos-annotated"))
    out = runner.invoke(app, ["labels", "train", *common])
    assert out.exit_code == 0 and store.read_json(layout.training_row("t-round-1", "client-0", "ecos-annotated"))
    assert "{0: 6, 1: 6" in runner.invoke(app, ["labels", "import", str(tmp_path / "fixed.csv"), *common]).output
    out = runner.invoke(app, ["labels", "export", str(export), "--round", "no-such-round", "--store", store_url])
    assert out.exit_code != 0 and "no config" in str(out.exception)


def test_a_round_with_efficientnet_lite0_never_reuses_mobilenet_features(first_round, store_url, tmp_path):
    """The backbone is part of every feature and index key: switching it recomputes both, and the
    simulated device embeds its data with the probe's backbone."""
    from flows.index_flow import index_flow
    from flows.round_flow import round_flow

    lite0 = TINY.model_copy(update={"domain_report": False, "local_baseline": False,
                                    "index": TINY.index.model_copy(update={"backbone": "efficientnet_lite0"}),
                                    "sampling": TINY.sampling.model_copy(update={"samplers": ("ecos", "oracle", "random")})})  # fmt: skip
    out = round_flow(lite0, store_url, "t-round-lite0", True, str(tmp_path))
    results = pd.DataFrame(out["results"]).set_index("method")
    assert set(results.index) == {"ecos", "oracle", "random"} and results["accuracy"].between(0, 1).all()
    assert (results["proxy_size"] == TINY.sampling.budget).all()
    store = Store(store_url)
    assert list(store.read_json(layout.round_key("t-round-lite0", "ledger.json"))["accepted"]) == ["client-0"]
    probe = json.loads(store.read_bytes(layout.probe_json("t-round-lite0")))
    assert probe["backbone"]["name"] == "efficientnet_lite0" and probe["dim"] == 1280 + 128
    assert "Feature cache: all computed" in store.read_bytes(layout.round_key("t-round-lite0", "report.md")).decode()
    mob, lite = index_flow(TINY, store_url), index_flow(lite0, store_url)  # both in the store by now: cache hits
    assert set(mob["features"]["keys"].values()).isdisjoint(lite["features"]["keys"].values())
    assert mob["index"]["key"] != lite["index"]["key"]


def test_the_backbone_feature_space_never_reuses_the_combined_index(first_round, store_url):
    """feature_space is part of every feature and index key; alone, the backbone's space ships no CNN."""
    from flows.index_flow import index_flow

    alone = TINY.model_copy(update={"index": TINY.index.model_copy(update={"feature_space": "backbone"})})
    both, plain = index_flow(TINY, store_url), index_flow(alone, store_url)
    assert both["features"]["adapted"]["bytes"] > 0 and "adapted" not in plain["features"]
    assert set(both["features"]["keys"].values()).isdisjoint(plain["features"]["keys"].values())
    assert both["index"]["key"] != plain["index"]["key"]
    assert both["features"]["adapted"] == index_flow(TINY, store_url)["features"]["adapted"]  # trained once, found after


def test_a_rerun_keeps_the_published_index_and_writes_invitations_a_crash_left_out(first_round, store_url):
    """A re-run of a round (after a suspend or a crash) samples with the index its probe was
    made from: an ingested pool that grew since keeps it, a changed built-in config is refused;
    invitations an interrupted publish never wrote are written with the same deadline and MAC."""
    from prefect import flow

    from ecos_core.exchange.auth import load_enrollment, verify
    from tasks.probe import publish_probe, published_index

    store = Store(store_url)
    source = store.read_json(layout.probe_source("t-round-1"))
    before = store.read_bytes(layout.invitation("t-round-1", "client-0"))
    store.delete(layout.invitation("t-round-1", "client-0"))

    @flow
    def republish() -> dict:
        return publish_probe(store_url, "t-round-1", "another-index", {}, TINY.sigma, TINY.delta, 60.0, ["client-0"],
                             TINY.index.coverage, None)  # fmt: skip

    again = republish()
    assert (again["index_key"], again["adapted"]) == (source["index_key"], source["adapted"])
    after = json.loads(store.read_bytes(layout.invitation("t-round-1", "client-0")))
    mac = after.pop("probe_hmac_sha256")  # under the client's current key (later tests here rotate it)
    assert {k: v for k, v in json.loads(before).items() if k != "probe_hmac_sha256"} == after
    assert verify(load_enrollment(store, "client-0").key_b64, store.read_bytes(layout.probe_json("t-round-1")), mac)
    assert published_index("t-round-1", again, "grown-pool-index", True) == (source["index_key"], source["adapted"])
    with pytest.raises(ValueError, match=r"this run built another-index \(the config, or ecos's index format, changed since\); start a new round id"):
        published_index("t-round-1", again, "another-index", False)


def test_the_round_spends_its_budget_class_by_class(first_round, store_url):
    """class_balance (the default): the combined space's index holds the cloud's class guess of
    every pool image; ECOS and the Oracle never pick an image guessed "none", the plain rule does."""
    import numpy as np

    from flows.index_flow import index_flow
    from tasks import catalog
    from tasks.index import load_classes
    from tasks.report import _by_class
    from tasks.sampling import select_proxy_set

    store = Store(store_url)
    indexed = index_flow(TINY, store_url)
    keys, index_key = indexed["features"]["keys"], indexed["index"]["key"]
    guesses, pool = load_classes(store_url, index_key), catalog.split(TINY.data, TINY.seed)[2]
    assert guesses is not None and guesses.shape == (len(pool),) and set(guesses) <= set(range(11))
    where = pd.Index(pool.ids)
    for method in ("ecos", "oracle"):
        picked = store.read_npy(layout.selection("t-round-1", "client-0", method))
        assert (guesses[where.get_indexer(picked)] < 10).all(), method
    every = [50.0] * TINY.index.k  # every cluster kept: the plain rule samples the off-task animals too
    plain = TINY.model_copy(update={"sampling": TINY.sampling.model_copy(update={"class_balance": False})})
    chosen = {}
    for name, cfg in (("balanced", TINY), ("plain", plain)):
        out = select_proxy_set.fn(store_url, cfg, keys, index_key, "t-class", "client-0", "ecos", every)
        assert out["size"] == TINY.sampling.budget and out["by_class"] == (name == "balanced")
        chosen[name] = guesses[where.get_indexer(store.read_npy(out["key"]))]
    assert (chosen["balanced"] < 10).all() and (chosen["plain"] == 10).any()
    # an index published before the guesses existed (a re-run keeps it): the plain rule, and it says so
    for part in ("centroids.npy", "assignments.npy", "radii.npy"):
        store.write_bytes(layout.index_part("t-old-index", part), store.read_bytes(layout.index_part(index_key, part)))
    meta = store.read_json(layout.index_part(index_key, "meta.json"))
    store.write_json(layout.index_part("t-old-index", "meta.json"), {k: v for k, v in meta.items() if k != "class_guesses"})
    old = select_proxy_set.fn(store_url, TINY, keys, "t-old-index", "t-class", "client-0", "ecos", every)
    assert not old["by_class"] and (guesses[where.get_indexer(store.read_npy(old["key"]))] == 10).any()
    report = store.read_bytes(layout.round_key("t-round-1", "report.md")).decode()
    assert "spent their cluster shares class by class" in report and not _by_class([old])  # what was done, not asked
    alone = TINY.model_copy(update={"index": TINY.index.model_copy(update={"feature_space": "backbone"})})
    assert load_classes(store_url, index_flow(alone, store_url)["index"]["key"]) is None  # no guesses: the plain rule


def test_the_index_flow_without_a_store_uses_the_configured_one(first_round, store_url, monkeypatch, tmp_path):
    """The nightly deployment passes no store: it must warm the store the rounds read
    (ECOS_STORE), not a local ./ecos-store beside the worker."""
    from flows.index_flow import index_flow

    monkeypatch.setenv("ECOS_STORE", store_url)
    monkeypatch.chdir(tmp_path)
    out = index_flow(TINY)
    assert out["features"]["cache_hits"] and not (tmp_path / "ecos-store").exists()
