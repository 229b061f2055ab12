"""The index of an ingested pool, one shard at a time: features per shard (cached by the
shard's content and the backbone), KMeans on a seeded sample, then each shard's nearest
centroid and distance. Cluster membership is a parquet table in the store, so a sampler
reads only the clusters it needs."""

from __future__ import annotations

import functools
import io
import time

import numpy as np
import pandas as pd
from prefect import task

from ecos_core.storage import layout
from ecos_core.embedding.feature_space import BackboneSpec
from ecos_core.storage.content import content_key
from ecos_core.sampling.class_share import combined_classes
from ecos_core.sampling.index import l2_normalize, nearest_with_distance, radii_of
from ecos_core.pool.catalog import PoolCatalog
from tasks import catalog
from tasks.common import STORAGE_RETRIES
from tasks.pool import read_shard

MEMBER_COLUMNS = ("id", "shard", "row", "domain", "cluster", "distance")  # and "class" in the combined space


def shard_features_key(sha256: str, spec: BackboneSpec, device: str = "cpu") -> str:
    # GPU features differ from CPU ones in the last bits: each has its own key, so one
    # never stands in for the other (the CPU key is the one the bit-identity tests pin)
    extra = () if device == "cpu" else (device,)
    return layout.features(content_key("pool-shard-v1", sha256, spec.model_dump(mode="json"), *extra))


@task(name="embed-shard", **STORAGE_RETRIES)
def embed_shard(store_url: str, pool_url: str, sha256: str, spec: BackboneSpec, batch_size: int, threads: int,
                device: str = "cpu") -> dict:  # fmt: skip
    """Features of one shard; a shard embedded before (by any pool or index) is skipped.
    device "auto": this worker's GPU when it has one."""
    import torch

    from ecos_core.embedding.backbones import load_backbone  # here: the driver never needs torch
    from ecos_core.embedding.features import embed

    device = "cuda" if device == "auto" and torch.cuda.is_available() else "cpu"
    store = catalog.store(store_url)
    key = shard_features_key(sha256, spec, device)
    if store.exists(key):
        return {"key": key, "computed": False, "n": 0, "seconds": 0.0, "device": device}
    if threads > 0:  # workers × threads = the cores; 0: a remote cluster keeps its own setting
        torch.set_num_threads(threads)
    model, _ = load_backbone(spec, device=device)
    images = read_shard(pool_url, sha256)
    start = time.perf_counter()
    store.write_npy(key, embed(images, model, spec.preprocessing, batch_size, show_bar=False))
    return {"key": key, "computed": True, "n": len(images), "seconds": time.perf_counter() - start, "device": device}


@functools.lru_cache(maxsize=8)
def read_features(store_url: str, key: str) -> np.ndarray:
    return catalog.store(store_url).read_npy(key)


def sample_features(store_url: str, keys: list[str], rows: list[np.ndarray]) -> np.ndarray:
    """The sampled rows of each shard's features, l2-normalised, read one shard at a time."""
    parts = [l2_normalize(catalog.store(store_url).read_npy(k)[r]) for k, r in zip(keys, rows) if len(r)]
    return np.concatenate(parts)


@task(name="assign-shard", **STORAGE_RETRIES)
def assign_shard(store_url: str, key: str, centroids: np.ndarray,
                 reference: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, ...]:  # fmt: skip
    """(nearest centroid, distance) of every row of one shard; in the combined space
    (`reference`: tasks.adapted.class_reference) also the cloud's class guess of each row."""
    features = catalog.store(store_url).read_npy(key)
    nearest = nearest_with_distance(l2_normalize(features), centroids)
    return nearest if reference is None else (*nearest, combined_classes(features, *reference))


def save_pool_index(store_url: str, index_key: str, pool: PoolCatalog, centroids: np.ndarray,
                    assigned: list[tuple[np.ndarray, np.ndarray]], feature_keys: dict[str, str]) -> dict:  # fmt: skip
    """Membership (parquet, in catalog order, so every sampler sees the pool in one order,
    as in memory), centroids, radii and where each shard's features are; returns the
    index's size figures. `assigned` is per shard in catalog order: the catalog lists each
    shard's rows together."""
    nearest = np.concatenate([a[0] for a in assigned])
    distance = np.concatenate([a[1] for a in assigned])
    members = pool.table[["id", "shard", "row", "domain"]].assign(cluster=nearest, distance=distance)
    if all(len(a) == 3 for a in assigned):  # the combined space: each image's class guess, for class_balance
        members["class"] = np.concatenate([a[2] for a in assigned])
    buf = io.BytesIO()
    members[[*MEMBER_COLUMNS, *(["class"] if "class" in members else [])]].to_parquet(buf, index=False)
    store = catalog.store(store_url)
    store.write_bytes(layout.index_part(index_key, "members.parquet"), buf.getvalue())
    store.write_npy(layout.index_part(index_key, "centroids.npy"), centroids)
    store.write_npy(layout.index_part(index_key, "radii.npy"), radii_of(nearest, distance, len(centroids)))
    store.write_json(layout.index_part(index_key, "features.json"), feature_keys)
    sizes = np.bincount(nearest, minlength=len(centroids))
    return {"key": index_key, "k": len(centroids), "pool_size": len(pool), "cluster_size_min": int(sizes.min()),
            "cluster_size_max": int(sizes.max()), "class_guesses": "class" in members}  # fmt: skip


def read_members(store_url: str, index_key: str, clusters: list[int] | None = None) -> pd.DataFrame:
    """Members of `clusters` (all when None), in catalog order."""
    data = catalog.store(store_url).read_bytes(layout.index_part(index_key, "members.parquet"))
    filters = None if clusters is None else [("cluster", "in", [int(c) for c in clusters])]
    return pd.read_parquet(io.BytesIO(data), filters=filters)


def features_at(store_url: str, index_key: str, dim: int, rows: pd.DataFrame) -> np.ndarray:
    """l2-normalised features of `rows` (columns shard, row), in their order, reading only
    the shards they lie in, one at a time."""
    store = catalog.store(store_url)
    keys = store.read_json(layout.index_part(index_key, "features.json"))  # shard -> its features (CPU or GPU)
    rows = rows.reset_index(drop=True)  # group.index: positions in `rows`
    out = np.empty((len(rows), dim), dtype=np.float32)  # dim: the index's feature space (backbone or combined)
    for sha, group in rows.groupby("shard", sort=False):
        taken = store.read_npy(keys[sha])[group["row"].to_numpy()]
        out[group.index.to_numpy()] = l2_normalize(taken)  # row by row, as on the whole: no second full copy
    return out
