"""Cloud index flow: embed the open-source pool and compress it into K centroids.

Reusable across rounds: every step is cached in the store by content. The built-in
pool is embedded in this process; an ingested pool (cfg.data.pool) shard by shard on
Dask, a manifest or image folder being ingested into the store first (only its new rows).
In the combined feature space the pool-adapted CNN is trained on annotated pool images
first and its features join the backbone's.
"""

from __future__ import annotations

import time

from prefect import flow

from ecos_core.config import RoundConfig
from ecos_core.settings import Settings
from flows import run_names
from flows.ingest_flow import ingest_flow
from flows.pool_index_flow import pool_index_flow
from tasks.adapted import adapted_space, combine_domain_features
from tasks.features import extract_features
from tasks.index import build_pool_index
from tasks.pool import pool_url_of
from tasks.store import check_store


@flow(name="ecos-index", log_prints=True, flow_run_name=run_names.index_run)
def index_flow(cfg: RoundConfig = RoundConfig(), store_url: str | None = None) -> dict:
    """store_url: None is the configured store (ECOS_STORE), so the nightly deployment,
    which passes none, warms the cache the deployed rounds read."""
    store_url = store_url or Settings().store
    check_store(store_url)
    if cfg.data.pool:
        return _index_ingested_pool(cfg, store_url)
    features = extract_features(store_url, cfg.data, cfg.index, cfg.seed)
    if cfg.index.feature_space == "combined":
        start = time.perf_counter()
        adapted = adapted_space(store_url, None, cfg.data, cfg.index, cfg.train.num_classes, cfg.seed)
        keys = combine_domain_features(store_url, features["keys"], cfg.data, cfg.seed, adapted)
        features.update(keys=keys, adapted=adapted, seconds=features["seconds"] + time.perf_counter() - start)
    index = build_pool_index(store_url, features["keys"], cfg.data, cfg.index, cfg.seed, features.get("adapted"),
                             cfg.train.num_classes)  # fmt: skip
    return {"features": features, "index": index}


def _index_ingested_pool(cfg: RoundConfig, store_url: str) -> dict:
    pool_url = pool_url_of(cfg.data.pool, store_url)
    if pool_url != cfg.data.pool:  # a manifest or a folder: ingest what the store's copy lacks
        ingest_flow(cfg.data.pool, pool_url, dask_address=cfg.dask.address, workers=cfg.dask.workers)
    out = pool_index_flow(pool_url, store_url, cfg.index, cfg.seed, cfg.dask.address, cfg.dask.workers,
                          cfg.train.num_classes, source=cfg.data.pool)
    features = out["features"]
    hits = features["shards"] - features["embedded_now"]
    features.update(keys={}, cache_hits=[f"{hits} of {features['shards']} pool shards"] if hits else [])
    return out
