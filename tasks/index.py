"""The pool index (faiss KMeans), cached in the store by content key."""

from __future__ import annotations

import functools
import time

import numpy as np

from prefect import get_run_logger, task

from ecos_core.storage import layout
from ecos_core.config import DataConfig, IndexConfig
from ecos_core.storage.content import content_key
from ecos_core.sampling.class_share import combined_classes, guess_setting
from ecos_core.sampling.index import PoolIndex, build_index
from tasks import catalog
from tasks.adapted import class_reference
from tasks.common import STORAGE_RETRIES
from tasks.features import features_of


@task(name="build-index", **STORAGE_RETRIES)
def build_pool_index(store_url: str, feature_keys: dict[str, str], data: DataConfig, index: IndexConfig, seed: int,
                     adapted: dict | None = None, classes: int = 10) -> dict:  # fmt: skip
    """KMeans over the built-in pool; in the combined space (`adapted`: the space's ref) also
    the cloud's class guess of every pool image (classes.npy, what class_balance spends by)."""
    store = catalog.store(store_url)
    pool = catalog.split(data, seed)[2]
    guesses = () if adapted is None else guess_setting(classes, index.off_task_domains)
    key = content_key(pool.ids, sorted(feature_keys.items()), index.k, index.niter, index.nredo, seed, "radii-v1",
                      *guesses)  # fmt: skip
    start = time.perf_counter()
    if store.exists(layout.index_part(key, "meta.json")):
        get_run_logger().info("index %s found in the store: KMeans skipped", key)
        return store.read_json(layout.index_part(key, "meta.json"))
    features = features_of(store_url, feature_keys, data, seed, pool.ids)
    result = build_index(features, index.k, seed, index.niter, index.nredo)
    if adapted is not None:
        reference = class_reference(store_url, None, data, index, classes, seed, adapted)
        store.write_npy(layout.index_part(key, "classes.npy"), combined_classes(features, *reference))
    store.write_npy(layout.index_part(key, "centroids.npy"), result.centroids)
    store.write_npy(layout.index_part(key, "assignments.npy"), result.assignments)
    store.write_npy(layout.index_part(key, "radii.npy"), result.radii)
    sizes = result.cluster_sizes()
    meta = {"key": key, "k": result.k, "pool_size": len(pool), "seconds": time.perf_counter() - start,
            "cluster_size_min": int(sizes.min()), "cluster_size_max": int(sizes.max()), "class_guesses": bool(guesses)}  # fmt: skip
    store.write_json(layout.index_part(key, "meta.json"), meta)  # written last: marks the index complete
    return meta


def load_centroids(store_url: str, key: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(centroids, radii) of any index, built-in or ingested pool: what the probe carries."""
    store = catalog.store(store_url)
    part = functools.partial(layout.index_part, key)
    radii = store.read_npy(part("radii.npy")) if store.exists(part("radii.npy")) else None  # "nearest" needs none
    return store.read_npy(part("centroids.npy")), radii


def load_index(store_url: str, key: str) -> PoolIndex:
    """The built-in pool's index, assignments included (an ingested pool keeps them in members.parquet)."""
    centroids, radii = load_centroids(store_url, key)
    return PoolIndex(centroids, catalog.store(store_url).read_npy(layout.index_part(key, "assignments.npy")), radii)


def has_class_guesses(store_url: str, key: str) -> bool:
    """Whether an index (built-in or ingested pool) holds the cloud's class guesses: a
    combined-space index built since they exist (an older one, kept by a re-run, does not)."""
    return bool(catalog.store(store_url).read_json(layout.index_part(key, "meta.json")).get("class_guesses"))


def load_classes(store_url: str, key: str) -> np.ndarray | None:
    """The built-in pool's class guesses, in pool order (None: a backbone-space index)."""
    store, path = catalog.store(store_url), layout.index_part(key, "classes.npy")
    return store.read_npy(path) if store.exists(path) else None
