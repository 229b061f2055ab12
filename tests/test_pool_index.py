"""An ingested pool indexed and sampled on a real local Dask cluster (2 workers) gives
bit-identical features, centroids, assignments, radii and selections to the in-memory,
single-process path; only new shards are embedded; a round runs on the user's pool."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ecos_core.embedding.backbones import load_backbone
from ecos_core.config import IndexConfig, RoundConfig
from ecos_core.embedding.features import embed
from ecos_core.sampling.index import build_index
from ecos_core.pool import layout
from ecos_core.pool.shards import ShardIntegrityError
from ecos_core.sampling.samplers import ECOSSampler, KCenterSampler, SamplingPool, ScoredSampler

# 10 × 256 sample points ≥ the pool: KMeans sees every point; the backbone's space, which the
# bit-identity tests below rebuild in memory (the combined space has its own test)
INDEX = IndexConfig(k=10, niter=10, nredo=1, feature_space="backbone")
SOURCES = ("builtin:mnist:700", "builtin:mnistm:500", "builtin:animal:500", "builtin:synth:300")


@pytest.fixture(scope="module")
def pool_url(tmp_path_factory) -> str:
    """Built-in domains listed in one manifest (uri builtin:<domain>/<index>): one ingest."""
    import pandas as pd

    from ecos_core.pool.sources import source_rows
    from flows.ingest_flow import ingest_flow

    folder = tmp_path_factory.mktemp("pool")
    pd.concat([source_rows(s) for s in SOURCES])[["id", "uri", "label", "domain"]].to_csv(folder / "m.csv", index=False)
    ingest_flow(str(folder / "m.csv"), str(folder / "pool"), shard_size=256, workers=2)
    return str(folder / "pool")


@pytest.fixture(scope="module")
def indexed(pool_url, tmp_path_factory):
    from flows.pool_index_flow import pool_index_flow

    store_url = str(tmp_path_factory.mktemp("store"))
    return store_url, pool_index_flow(pool_url, store_url, INDEX, seed=0, workers=2)


def in_memory(pool_url):
    """The single-process path: every shard's images embedded in this process, concatenated."""
    from tasks.pool import read_pool, read_shard

    _, pool = read_pool(pool_url)
    model, spec = load_backbone()
    features = np.concatenate([embed(read_shard(pool_url, s), model, spec.preprocessing, 128, show_bar=False)
                               for s in pool.shards()])  # fmt: skip
    return pool, features


def test_dask_index_is_bit_identical_to_the_single_process_path(pool_url, indexed):
    from ecos_core.storage import layout as store_layout
    from tasks import catalog
    from tasks.pool_index import read_features, read_members, shard_features_key

    store_url, out = indexed
    pool, features = in_memory(pool_url)
    assert out["features"]["embedded_now"] == out["features"]["shards"] == len(pool.shards())
    _, spec = load_backbone()
    stored = np.concatenate([read_features(store_url, shard_features_key(s, spec)) for s in pool.shards()])
    assert np.array_equal(stored, features)
    ref = build_index(features, INDEX.k, 0, INDEX.niter, INDEX.nredo)
    key = out["index"]["key"]
    store = catalog.store(store_url)
    assert np.array_equal(store.read_npy(store_layout.index_part(key, "centroids.npy")), ref.centroids)
    # a radius is a max of distances that faiss computes in batches of another shape here
    # (per shard vs the whole pool): equal to float32 rounding, not always to the bit
    np.testing.assert_allclose(store.read_npy(store_layout.index_part(key, "radii.npy")), ref.radii, rtol=1e-6)
    members = read_members(store_url, key).set_index("id").loc[pool.ids]
    assert np.array_equal(members["cluster"].to_numpy(), ref.assignments)
    some = read_members(store_url, key, clusters=[2, 5])
    assert set(some["cluster"]) == {2, 5} and len(some) == int(np.isin(ref.assignments, [2, 5]).sum())


def test_the_combined_space_on_dask_is_the_one_computed_in_memory(pool_url, indexed):
    """feature_space "combined": the adapted CNN is trained once on the pool's annotated rows
    ("none" for the off-task animal silhouettes), then each shard is combined on a worker;
    the index is exactly KMeans over the in-memory combined features."""
    from ecos_core.storage import layout as store_layout
    from ecos_core.embedding.adapted_space import combined
    from flows.pool_index_flow import pool_index_flow
    from tasks import catalog
    from ecos_core.sampling.class_share import combined_classes, select_by_class
    from ecos_core.sampling.index import l2_normalize
    from tasks.adapted import class_reference, load_adapted
    from tasks.pool import read_shard
    from tasks.pool_index import read_members
    from tasks.pool_sampling import select_from_pool

    store_url, plain = indexed
    cfg = INDEX.model_copy(update={"feature_space": "combined", "adapted_size": 400, "adapted_steps": 10})
    out = pool_index_flow(pool_url, store_url, cfg, seed=0, workers=2)
    assert out["features"]["embedded_now"] == 0 and out["index"]["key"] != plain["index"]["key"]  # backbone features reused
    space = load_adapted(store_url, out["features"]["adapted"])
    pool, features = in_memory(pool_url)
    rows = np.cumsum([0, *[len(read_shard(pool_url, s)) for s in pool.shards()]])
    expected = np.concatenate([combined(features[a:b], space.embed(read_shard(pool_url, s)))
                               for s, a, b in zip(pool.shards(), rows[:-1], rows[1:])])  # fmt: skip
    store = catalog.store(store_url)
    where = store.read_json(store_layout.index_part(out["index"]["key"], "features.json"))
    assert np.array_equal(np.concatenate([store.read_npy(where[s]) for s in pool.shards()]), expected)
    ref = build_index(expected, INDEX.k, 0, INDEX.niter, INDEX.nredo)
    assert np.array_equal(store.read_npy(store_layout.index_part(out["index"]["key"], "centroids.npy")), ref.centroids)
    members = read_members(store_url, out["index"]["key"]).set_index("id").loc[pool.ids]
    assert np.array_equal(members["cluster"].to_numpy(), ref.assignments)
    # the cloud's class guesses: the annotated rows' kNN vote in the adapted half, as in memory
    reference = class_reference(store_url, pool_url, None, cfg, 10, 0, out["features"]["adapted"])
    guesses = combined_classes(expected, *reference)
    assert np.array_equal(members["class"].to_numpy(), guesses)
    assert (guesses[pool.domains == "animal"] == 10).mean() > 0.9  # off task: mostly "none"
    # class_balance (the default) spends the Oracle's shares class by class, as select_by_class in memory
    round_cfg = RoundConfig.model_validate({"data": {"pool": pool_url}, "index": cfg.model_dump(), "sampling": {"budget": 150}})
    train, test = catalog.client_split(round_cfg.data, round_cfg.seed)
    keep = ~np.isin(pool.ids, np.concatenate([train.ids, test.ids]))
    view = SamplingPool(l2_normalize(expected)[keep], ref.assignments[keep], ref.centroids)
    scores = np.bincount(ref.assignments[keep][pool.domains[keep] == "mnistm"], minlength=INDEX.k).astype(float)
    oracle = ScoredSampler(ECOSSampler(sigma=0.0, seed=0, **round_cfg.sampling.rule_params()), scores)
    picked = select_by_class(oracle, view, 150, guesses[keep], 10)
    got = select_from_pool(store_url, out["index"]["key"], round_cfg, "oracle", scores)
    assert list(got) == list(pool.ids[keep][picked]) and len(got) == 150
    assert (guesses[keep][picked] < 10).all()  # "none" guesses are never picked
    plain_rule = round_cfg.model_copy(update={"sampling": round_cfg.sampling.model_copy(update={"class_balance": False})})
    unbalanced = select_from_pool(store_url, out["index"]["key"], plain_rule, "oracle", scores)
    assert list(unbalanced) == list(pool.ids[keep][oracle.select(view, 150)]) != list(got)
    again = pool_index_flow(pool_url, store_url, cfg, seed=0, workers=2)
    assert again["features"]["adapted"] == out["features"]["adapted"] and again["index"]["key"] == out["index"]["key"]


def test_a_capped_cluster_is_sampled_class_by_class_and_the_budget_is_spent(pool_url, indexed, monkeypatch):
    """class_balance on an ingested pool with every cluster over the memory cap: each capped
    cluster is sampled class by class (at least each class's budget), so nothing is left
    unspent that the in-memory path would spend, and no guessed "none" is picked."""
    from flows.pool_index_flow import pool_index_flow
    from tasks import pool_sampling
    from tasks.pool_index import read_members
    from tasks.pool_sampling import select_from_pool

    store_url, _ = indexed
    cfg = INDEX.model_copy(update={"feature_space": "combined", "adapted_size": 400, "adapted_steps": 10})
    key = pool_index_flow(pool_url, store_url, cfg, seed=0, workers=2)["index"]["key"]  # built by the test above
    round_cfg = RoundConfig.model_validate({"data": {"pool": pool_url}, "index": cfg.model_dump(), "sampling": {"budget": 150}})
    members = read_members(store_url, key)
    scores = np.bincount(members["cluster"][members["domain"] == "mnistm"], minlength=INDEX.k).astype(float)
    uncapped = select_from_pool(store_url, key, round_cfg, "oracle", scores)
    monkeypatch.setattr(pool_sampling, "MAX_ROWS_IN_MEMORY", 40)  # every cluster is larger
    got = select_from_pool(store_url, key, round_cfg, "oracle", scores)
    assert len(got) == len(uncapped) == 150 and len(set(got)) == 150
    assert (members.set_index("id").loc[got, "class"] < 10).all()
    assert list(select_from_pool(store_url, key, round_cfg, "oracle", scores)) == list(got)  # seeded


def test_each_shard_is_embedded_on_its_workers_device_and_the_index_knows_where(pool_url, indexed):
    """device "auto" (the default) embeds on a worker's GPU when it has one: these CPU
    workers report "cpu" and use the CPU key; a GPU's features get a key of their own."""
    import torch

    from ecos_core.storage import layout as store_layout
    from tasks import catalog
    from tasks.pool import read_pool
    from tasks.pool_index import shard_features_key

    store_url, out = indexed
    _, spec = load_backbone()
    expected = ["cuda"] if torch.cuda.is_available() else ["cpu"]
    assert INDEX.device == "auto" and out["features"]["devices"] == expected
    where = catalog.store(store_url).read_json(store_layout.index_part(out["index"]["key"], "features.json"))
    assert where == {s: shard_features_key(s, spec, expected[0]) for s in read_pool(pool_url)[1].shards()}
    assert shard_features_key("ab" * 32, spec, "cuda") != shard_features_key("ab" * 32, spec, "cpu")


@pytest.mark.parametrize("few", [False, True])  # True: ECOS loads its clusters a few at a time
def test_pool_selections_match_the_in_memory_samplers(pool_url, indexed, few, monkeypatch):
    from ecos_core.sampling.index import l2_normalize
    from tasks import catalog
    from tasks import pool_sampling
    from tasks.pool_sampling import select_from_pool

    store_url, out = indexed
    cfg = RoundConfig.model_validate({"data": {"pool": pool_url}, "index": INDEX.model_dump(), "sampling": {"budget": 150}})
    pool, features = in_memory(pool_url)
    train, test = catalog.client_split(cfg.data, cfg.seed)
    keep = ~np.isin(pool.ids, np.concatenate([train.ids, test.ids]))
    assert (~keep).sum() > 0, "the pool should hold some of the client's own mnistm samples"
    ref = build_index(features, INDEX.k, 0, INDEX.niter, INDEX.nredo)
    if few:  # the largest cluster just fits, so no cluster is sampled down
        monkeypatch.setattr(pool_sampling, "MAX_ROWS_IN_MEMORY", int(np.bincount(ref.assignments).max()))
    view = SamplingPool(l2_normalize(features)[keep], ref.assignments[keep], ref.centroids)
    scores = np.bincount(ref.assignments[keep][pool.domains[keep] == "mnistm"], minlength=INDEX.k).astype(float)
    rule = ECOSSampler(sigma=0.0, seed=0)
    expected = {"oracle": rule.select_with_scores(view, 150, scores), "kcenter": KCenterSampler(0).select(view, 150)}
    for method, picked in expected.items():
        got = select_from_pool(store_url, out["index"]["key"], cfg, method, scores)
        assert list(got) == list(pool.ids[keep][picked]), method  # same ids, in pool order
    # the cluster hierarchy groups the index's centroids on the sharded path too
    grouped = cfg.model_copy(update={"sampling": cfg.sampling.model_copy(update={"group_sizes": (3.0, 5.0)})})
    noisy = scores + np.random.default_rng(0).normal(0, cfg.sigma, size=INDEX.k)
    picked = ECOSSampler(sigma=cfg.sigma, seed=0, **grouped.sampling.rule_params()).select_with_scores(view, 150, noisy)
    got = select_from_pool(store_url, out["index"]["key"], grouped, "ecos", noisy)
    assert list(got) == list(pool.ids[keep][picked])
    ood = cfg.model_copy(update={"data": cfg.data.model_copy(update={"regime": "ood"})})
    assert not any(i.startswith("mnistm/") for i in select_from_pool(store_url, out["index"]["key"], ood, "random", None))


def test_a_cluster_larger_than_the_memory_cap_is_k_centred_over_a_seeded_sample(pool_url, indexed, monkeypatch):
    from tasks import pool_sampling
    from tasks.pool_index import read_members
    from tasks.pool_sampling import select_from_pool

    monkeypatch.setattr(pool_sampling, "MAX_ROWS_IN_MEMORY", 40)  # every cluster is larger
    store_url, out = indexed
    key = out["index"]["key"]
    cfg = RoundConfig.model_validate({"data": {"pool": pool_url}, "index": INDEX.model_dump(), "sampling": {"budget": 60}})
    members = read_members(store_url, key)
    scores = np.bincount(members["cluster"][members["domain"] == "mnistm"], minlength=INDEX.k).astype(float)
    loaded = []
    real_features_at = pool_sampling.features_at
    monkeypatch.setattr(pool_sampling, "features_at", lambda *a: loaded.append(len(a[3])) or real_features_at(*a))
    got = select_from_pool(store_url, key, cfg, "oracle", scores)
    assert len(got) == 60 and len(set(got)) == 60 and max(loaded) <= 40  # never more rows than the cap at once
    kept = ECOSSampler(sigma=0.0).cluster_budgets(scores, np.bincount(members["cluster"], minlength=INDEX.k), 60)
    assert set(members.set_index("id").loc[got, "cluster"]) <= set(np.flatnonzero(kept))
    assert list(select_from_pool(store_url, key, cfg, "oracle", scores)) == list(got)  # seeded


def test_only_new_shards_are_embedded_and_a_changed_shard_is_refused(pool_url, indexed, tmp_path):
    import shutil

    from flows.ingest_flow import ingest_flow
    from flows.pool_index_flow import pool_index_flow
    from tasks.pool import images_of, read_pool

    store_url, _ = indexed
    grown = str(tmp_path / "grown")
    shutil.copytree(pool_url, grown)
    assert ingest_flow("builtin:optdigits:300", grown, shard_size=256, workers=2)["ingested"] == 300
    out = pool_index_flow(grown, store_url, INDEX, seed=0, workers=2)
    assert out["features"]["embedded_now"] == 2 and out["features"]["shards"] == len(read_pool(grown)[1].shards())

    _, pool = read_pool(grown)
    victim = tmp_path / "grown" / layout.shard(pool.shards()[0])
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ShardIntegrityError, match="changed after ingest"):
        images_of(grown, pool.ids[:1])


def test_a_round_runs_on_the_users_manifest_with_its_own_client_dataset(pool_url, tmp_path):
    """data.pool names the manifest itself: the round ingests it into the store first."""
    from ecos_core.storage.store import Store
    from flows.round_flow import round_flow
    from tasks import catalog
    from tasks.pool import pool_url_of, read_pool

    manifest = str(Path(pool_url).parent / "m.csv")
    cfg = RoundConfig.model_validate({
        "data": {"pool": manifest, "client": "builtin:mnistm:400", "n_client_train": 80, "n_client_test": 80},
        "index": {"k": 8, "niter": 10, "nredo": 1, "adapted_steps": 10}, "sampling": {"budget": 60},
        "train": {"max_epochs": 2, "max_steps": 10, "batch_size": 32},
        "deadline_s": 120, "poll_s": 0.3, "domain_report": False, "dask": {"workers": 2},
    })  # fmt: skip
    store_url = str(tmp_path / "store")
    out = round_flow(cfg, store_url, "t-pool-round", True, str(tmp_path / "devices"))
    rows = {r["method"]: r for r in out["results"]}
    assert set(rows) == {"ecos", "oracle", "random", "kcenter", "local"}
    assert rows["random"]["proxy_size"] == 60 and rows["ecos"]["proxy_size"] > 0
    train, test = catalog.client_split(cfg.data, cfg.seed)
    client_ids = set(train.ids) | set(test.ids)
    assert len(train) == 80 and len(test) == 80
    ingested = pool_url_of(manifest, store_url)
    assert ingested.startswith(store_url) and read_pool(ingested)[0]["n_images"] == read_pool(pool_url)[0]["n_images"]
    pool_ids = set(read_pool(ingested)[1].ids)
    for method in ("ecos", "oracle", "random", "kcenter"):
        picked = set(Store(store_url).read_npy(f"rounds/t-pool-round/selections/client-0/{method}.npy"))
        assert picked <= pool_ids and not picked & client_ids, method
    assert rows["ecos"]["client_domain_share"] > rows["random"]["client_domain_share"]


def test_the_bench_reads_an_ingested_pool_and_never_caps_a_user_domain_silently(pool_url):
    """The bench loads a pool through ecos_core.pool, as the flows do; a user domain named
    like a built-in one keeps all its images unless the user asked for a cap."""
    from ecos_core.benchmark.run import BenchContext
    from ecos_core.benchmark.grid import GridSpec
    from tasks.pool import read_pool

    counts = read_pool(pool_url)[1].domain_counts()
    spec = GridSpec(pool_data=pool_url, client_domains=("mnistm",), n_client_train=50, n_client_test=50)
    parts = BenchContext(spec).domains(0)
    assert {d: len(p) for d, p in parts.items()} == counts
    assert "mnist" in spec.domain_sizes  # a built-in default of the same name exists and is not applied
    capped = GridSpec(pool_data=pool_url, client_domains=("mnistm",), n_client_train=50, n_client_test=50,
                      domain_sizes={"mnist": 100})  # fmt: skip
    assert len(BenchContext(capped).domains(0)["mnist"]) == 100
    images = BenchContext(spec).domains(0)["animal"].images
    assert images.shape[1:] == (28, 28, 3) and images.dtype == np.uint8


def _dask_workers() -> list:
    """This process's Dask worker processes (LocalCluster spawns them as its children)."""
    import psutil

    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            pass
    return found


def test_a_worker_killed_mid_index_costs_only_its_shard(pool_url, indexed, tmp_path):
    """SIGKILL one Dask worker once the first shard's features are in the store: the index
    still completes (the lost task reruns on a worker), identical to the undisturbed one."""
    import os
    import signal
    import threading
    import time

    from ecos_core.storage import layout as store_layout
    from flows.pool_index_flow import pool_index_flow
    from tasks import catalog

    store_url, undisturbed = indexed
    fresh = tmp_path / "store"
    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(r=pool_index_flow(pool_url, str(fresh), INDEX, seed=0, workers=2)))
    thread.start()
    killed = None
    deadline = time.monotonic() + 300
    while thread.is_alive() and time.monotonic() < deadline:
        if killed is None and list((fresh / "features").glob("*.npy")) if (fresh / "features").exists() else False:
            workers = _dask_workers()
            if workers:
                killed = workers[0].pid
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    thread.join(timeout=60)
    assert killed is not None, "no worker was killed: the test did not test anything"
    assert out["r"]["index"]["key"] == undisturbed["index"]["key"]
    key = store_layout.index_part(out["r"]["index"]["key"], "centroids.npy")
    assert np.array_equal(catalog.store(str(fresh)).read_npy(key), catalog.store(store_url).read_npy(key))


def test_same_pixels_under_other_ids_get_their_own_index(pool_url, indexed, tmp_path):
    """The membership table names ids: a pool whose shards are equal but whose catalog
    lists them under other ids must not reuse another pool's cached index."""
    import shutil

    from ecos_core.pool.catalog import PoolCatalog
    from flows.pool_index_flow import pool_index_flow
    from tasks.pool import read_pool
    from tasks.pool_index import read_members

    store_url, first = indexed
    renamed = tmp_path / "renamed"
    shutil.copytree(pool_url, renamed)
    _, pool = read_pool(pool_url)
    table = pool.table.assign(id=["other/" + i for i in pool.table["id"]])
    (renamed / layout.CATALOG).write_bytes(PoolCatalog(table).to_parquet())
    out = pool_index_flow(str(renamed), store_url, INDEX, seed=0, workers=2)
    assert out["features"]["embedded_now"] == 0  # the same shards: their features are reused
    assert out["index"]["key"] != first["index"]["key"]
    assert read_members(store_url, out["index"]["key"])["id"].str.startswith("other/").all()
