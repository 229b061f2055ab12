"""Cloud index flow: embed the open-source pool and compress it into K centroids.

Reusable across rounds: both steps are cached in the store by content.
"""

from __future__ import annotations

from prefect import flow

from ecos_core.config import RoundConfig
from tasks.features import extract_features
from tasks.index import build_pool_index
from tasks.store import check_store


@flow(name="ecos-index", log_prints=True)
def index_flow(cfg: RoundConfig = RoundConfig(), store_url: str = "./ecos-store") -> dict:
    check_store(store_url)
    features = extract_features(store_url, cfg.data, cfg.index, cfg.seed)
    index = build_pool_index(store_url, features["keys"], cfg.data, cfg.index, cfg.seed)
    return {"features": features, "index": index}
