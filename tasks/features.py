"""Cloud feature extraction, cached in the store by content (data + backbone + preprocessing)."""

from __future__ import annotations

import functools
import time

import numpy as np
from prefect import get_run_logger, task

from ecos_core.storage import layout
from ecos_core.embedding.feature_space import BackboneSpec
from ecos_core.config import DataConfig, IndexConfig
from ecos_core.storage.content import content_key
from tasks import catalog
from tasks.common import STORAGE_RETRIES, progress_artifact


def backbone_spec(index: IndexConfig) -> BackboneSpec:
    """The feature space of this deployment: the chosen backbone, its weights (hash-checked;
    a user's model fetched, hashed and its output checked) + preprocessing. Its JSON is part
    of every feature key, hence of every index key: two backbones never share a cache entry."""
    from ecos_core.embedding.backbones import resolve_spec  # here: torch only when features are computed

    return resolve_spec(index.backbone, index.preprocessing, index.model_url, index.model_sha256, index.feature_dim)


@task(name="extract-features", **STORAGE_RETRIES)
def extract_features(store_url: str, data: DataConfig, index: IndexConfig, seed: int) -> dict:
    """Features of every domain's samples; a domain already in the store is skipped."""
    log = get_run_logger()
    store = catalog.store(store_url)
    spec = backbone_spec(index)
    from ecos_core.embedding.backbones import load_backbone
    from ecos_core.embedding.features import embed

    model, _ = load_backbone(spec)
    keys, hits, start = {}, [], time.perf_counter()
    for name, part in catalog.domains(data, seed).items():
        key = content_key(part.images, part.ids, spec.model_dump(mode="json"))
        keys[name] = key
        if store.exists(layout.features(key)):
            hits.append(name)
            continue
        progress = progress_artifact(f"features-{name}", f"feature extraction, domain {name}")
        store.write_npy(layout.features(key), embed(part.images, model, spec.preprocessing, index.batch_size,
                                                    progress=progress, desc=f"features {name}"))  # fmt: skip
    if hits:
        log.info("feature cache hit for %d/%d domains (%s): extraction skipped", len(hits), len(keys), ", ".join(hits))
    return {"keys": keys, "cache_hits": hits, "seconds": time.perf_counter() - start, "backbone": spec.model_dump(mode="json")}


@functools.lru_cache(maxsize=8)
def _domain_features(store_url: str, key: str) -> np.ndarray:
    return catalog.store(store_url).read_npy(layout.features(key))


def features_of(store_url: str, feature_keys: dict[str, str], data: DataConfig, seed: int, ids: np.ndarray) -> np.ndarray:
    """Gather the stored features of the samples `ids` (any mix of domains)."""
    parts = catalog.domains(data, seed)
    names = list(parts)
    table = np.concatenate([_domain_features(store_url, feature_keys[n]) for n in names])
    universe_ids = np.concatenate([parts[n].ids for n in names])
    return table[catalog.rows_of(ids, universe_ids)]
