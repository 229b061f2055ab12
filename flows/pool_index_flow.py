"""Index an ingested pool at any size: embed every shard and assign it to the centroids,
both mapped over the shards on Dask; KMeans in between on a seeded sample.

Cached by content: a shard embedded before is not embedded again (a nightly run after an
ingest extracts only the new shards), and an index with the same inputs is reused.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger, unmapped

from ecos_core.storage import layout
from flows import run_names
from ecos_core.config import IndexConfig
from ecos_core.settings import Settings
from ecos_core.storage.content import content_key
from ecos_core.sampling.class_share import guess_setting
from ecos_core.sampling.index import sample_rows, train_centroids
from tasks import catalog
from tasks.adapted import adapt_shard, adapted_space, check_pool_for_adapted, class_reference
from tasks.features import backbone_spec
from tasks.pool import require_pool
from tasks.pool_index import assign_shard, embed_shard, sample_features, save_pool_index
from tasks.runner import dask_runner, torch_threads
from tasks.store import check_store


@flow(name="ecos-pool-index-shards", flow_run_name="index-shards-seed{seed}")
def _index_shards(pool_url: str, store_url: str, index: IndexConfig, seed: int, threads: int, classes: int) -> dict:
    log = get_run_logger()
    _, pool = require_pool(pool_url)
    shards, sizes = pool.shards(), list(pool.shard_sizes().values())
    spec = backbone_spec(index)
    start = time.perf_counter()
    embedded = [f.result() for f in embed_shard.map(store_url, pool_url, shards, unmapped(spec), index.batch_size, threads,
                                                    index.device)]  # fmt: skip
    computed = [e for e in embedded if e["computed"]]
    log.info("features: %d of %d shards embedded now, %d found in the store", len(computed), len(shards),
             len(shards) - len(computed))  # fmt: skip
    keys, adapted = [e["key"] for e in embedded], None
    if index.feature_space == "combined":  # the adapted CNN, trained on annotated pool images, then per shard
        adapted = adapted_space(store_url, pool_url, None, index, classes, seed)
        keys = [f.result() for f in adapt_shard.map(store_url, pool_url, shards, keys, unmapped(adapted), threads)]
    features_s = time.perf_counter() - start
    # the catalog's ids and domains too: members.parquet names them, and the same pixels
    # may be listed under other ids in another pool
    guesses = () if adapted is None else guess_setting(classes, index.off_task_domains)
    key = content_key("pool-index-v2", keys, pool.ids, pool.domains, index.k, index.niter, index.nredo, seed,
                      index.points_per_centroid, *guesses)  # fmt: skip
    store = catalog.store(store_url)
    features = {"shards": len(shards), "embedded_now": len(computed), "images_embedded": sum(e["n"] for e in computed),
                "seconds": features_s, "backbone": spec.model_dump(mode="json"), "adapted": adapted,
                "devices": sorted({e["device"] for e in embedded})}  # fmt: skip
    if store.exists(layout.index_part(key, "meta.json")):
        log.info("index %s found in the store: KMeans and assignment skipped", key)
        return {"features": features, "index": store.read_json(layout.index_part(key, "meta.json"))}
    start = time.perf_counter()
    sample = sample_features(store_url, keys, sample_rows(sizes, index.k * index.points_per_centroid, seed))
    centroids = train_centroids(sample, index.k, seed, index.niter, index.nredo)
    kmeans_s = time.perf_counter() - start
    # the class vote's reference (a few thousand rows) goes to every shard's assignment
    reference = None if adapted is None else class_reference(store_url, pool_url, None, index, classes, seed, adapted)
    assigned = [f.result() for f in assign_shard.map(store_url, keys, unmapped(centroids), unmapped(reference))]
    meta = save_pool_index(store_url, key, pool, centroids, assigned, dict(zip(shards, keys)))
    meta.update(pool=pool_url, kmeans_points=len(sample), seconds=time.perf_counter() - start, kmeans_seconds=kmeans_s)
    store.write_json(layout.index_part(key, "meta.json"), meta)  # written last: marks the index complete
    return {"features": features, "index": meta}


@flow(name="ecos-pool-index", log_prints=True, flow_run_name=run_names.pool_index_run)
def pool_index_flow(
    pool_url: str,
    store_url: str | None = None,
    index: IndexConfig = IndexConfig(),
    seed: int = 0,
    dask_address: str | None = None,
    workers: int | None = None,
    classes: int = 10,
    source: str | None = None,
) -> dict:
    """dask_address: an existing cluster (tcp://host:8786); else a local one of `workers` processes.
    classes: the annotators' classes (train.num_classes), for the combined space's CNN.
    source: what the user gave (a manifest, a folder), named in errors instead of pool_url."""
    store_url = store_url or Settings().store  # None: the configured store (ECOS_STORE), as every flow
    check_store(store_url)
    if index.feature_space == "combined":  # a pool it cannot train on fails now, not after every shard
        check_pool_for_adapted(pool_url, index, classes, where=source)
    runner = dask_runner(dask_address, workers)
    threads = torch_threads(workers) if dask_address is None else 0
    return _index_shards.with_options(task_runner=runner)(pool_url, store_url, index, seed, threads, classes)
