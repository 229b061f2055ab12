"""Pool I/O: reading a published pool (catalog, shards) and ingesting one chunk into a shard."""

from __future__ import annotations

import functools
import io

import numpy as np
import pandas as pd
from prefect import task

from ecos_core.storage.content import content_key
from ecos_core.pool import layout, reader
from ecos_core.pool.catalog import PoolCatalog
from ecos_core.pool.ingest import OnError, decode_chunk
from ecos_core.pool.shards import encode_shard
from ecos_core.types import ImageSet
from tasks import catalog
from tasks.common import STORAGE_RETRIES

def read_pool(pool_url: str) -> tuple[dict | None, PoolCatalog]:
    """(pool.json, catalog) of a published pool; (None, empty) where none is published yet."""
    store = catalog.store(pool_url)
    if not store.exists(layout.POOL_JSON):
        return None, PoolCatalog.empty()
    raw = store.read_bytes(layout.POOL_JSON)
    return _read_pool(pool_url, raw)


@functools.lru_cache(maxsize=4)
def _read_pool(pool_url: str, raw: bytes) -> tuple[dict, PoolCatalog]:
    """Cached on pool.json's bytes: a re-ingest publishes a new pool.json, so a new catalog."""
    store = catalog.store(pool_url)
    return reader.parse_meta(raw, store.uri(layout.POOL_JSON)), reader.read_catalog(store)


def pool_url_of(source: str, store_url: str) -> str:
    """Where the round's pool lives: an ingested pool is used where it is; a manifest or
    an image folder is ingested into the store, under a name given by its URL."""
    if reader.is_pool(catalog.store(source)):
        return source
    return catalog.store(store_url).uri(f"pools/{content_key('pool-source-v1', source)}")


def images_of(pool_url: str, ids: np.ndarray) -> ImageSet:
    """The images of `ids` (in that order), read from only the shards that hold them."""
    meta, pool = require_pool(pool_url)
    return reader.gather_images(meta, pool, ids, lambda sha: read_shard(pool_url, sha))


def require_pool(pool_url: str) -> tuple[dict, PoolCatalog]:
    meta, pool = read_pool(pool_url)
    if meta is None:
        raise FileNotFoundError(f"{pool_url}: no ingested pool there (run `ecos pool ingest SOURCE --to {pool_url}`)")
    return meta, pool


@functools.lru_cache(maxsize=4)
def read_shard(pool_url: str, sha256: str) -> np.ndarray:
    """A shard's images (cached per process), refused if its bytes changed since ingest."""
    return reader.read_shard(catalog.store(pool_url), sha256)


def write_chunk_rows(pool_url: str, run_key: str, rows: pd.DataFrame, bounds: list[tuple[int, int]]) -> int:
    """Each unfinished chunk's source rows as a small parquet in the pool's ingest folder:
    the mapped tasks get chunk numbers, so no flow parameter ever holds the whole listing."""
    store = catalog.store(pool_url)
    for chunk, (start, stop) in enumerate(bounds):
        if not store.exists(layout.ingest_chunk(run_key, chunk)):
            buf = io.BytesIO()
            rows.iloc[start:stop].to_parquet(buf, index=False)
            store.write_bytes(layout.ingest_rows(run_key, chunk), buf.getvalue())
    return len(bounds)


@task(name="ingest-chunk", **STORAGE_RETRIES)
def ingest_chunk(pool_url: str, run_key: str, chunk: int, image_size: int, on_error: OnError, max_pixels: int) -> dict:
    """Decode one chunk into one shard. Its checkpoint (written after the shard) makes a
    rerun skip it: a killed ingest resumes, a finished one is idempotent. Returns only
    counts: the catalog rows stay in the checkpoint, so the driver never holds them all."""
    store = catalog.store(pool_url)
    checkpoint = layout.ingest_chunk(run_key, chunk)
    if store.exists(checkpoint):
        return _summary(store.read_json(checkpoint))
    rows = pd.read_parquet(io.BytesIO(store.read_bytes(layout.ingest_rows(run_key, chunk))))
    images, kept, errors = decode_chunk(rows, image_size, on_error, max_pixels)
    sha = None
    if len(kept):
        data, sha = encode_shard(images)
        if not store.exists(layout.shard(sha)):  # content-addressed: the same images are one object
            store.write_bytes(layout.shard(sha), data)
    record = {"chunk": chunk, "shard": sha, "n": len(kept), "skipped": [e.as_dict() for e in errors],
              "rows": {"id": kept["id"].tolist(), "uri": kept["uri"].tolist(), "label": kept["label"].tolist(),
                       "domain": kept["domain"].tolist()}}  # fmt: skip
    store.write_json(checkpoint, record)
    return _summary(record)


def _summary(record: dict) -> dict:
    return {k: record[k] for k in ("chunk", "shard", "n", "skipped")}


def chunk_catalog_rows(record: dict) -> pd.DataFrame:
    rows = pd.DataFrame(record["rows"])
    rows["shard"] = record["shard"]
    rows["row"] = np.arange(len(rows), dtype=np.int64)
    rows["label"] = rows["label"].astype(np.int64)
    return rows


@task(name="publish-pool", **STORAGE_RETRIES)
def publish_pool(pool_url: str, run_key: str, chunks: int, image_size: int, shard_size: int) -> dict:
    """The pool so far plus every chunk's rows (read from its checkpoint): the catalog
    first, pool.json last, so a reader never sees a pool without its catalog. Small
    inputs only: Prefect hashes a task's inputs."""
    store = catalog.store(pool_url)
    meta, pool = read_pool(pool_url)
    records = (store.read_json(layout.ingest_chunk(run_key, chunk)) for chunk in range(chunks))
    new = [chunk_catalog_rows(r) for r in records if r["n"]]
    extended = pool.extend(pd.concat(new, ignore_index=True)) if new else pool
    store.write_bytes(layout.CATALOG, extended.to_parquet())
    out = {"format": reader.POOL_FORMAT, "image_size": image_size, "shard_size": (meta or {}).get("shard_size", shard_size),
           "n_images": len(extended), "shards": [{"sha256": s, "n": n} for s, n in extended.shard_sizes().items()],
           "domains": extended.domain_counts(), "labelled": int((extended.labels >= 0).sum())}  # fmt: skip
    store.write_json(layout.POOL_JSON, out)
    return out


def round_pool_images(store_url: str, cfg, ids: np.ndarray) -> ImageSet:  # noqa: ANN001 - RoundConfig
    """The pool images of `ids` in a round: from the ingested pool's shards, or from the
    built-in split's pool."""
    if cfg.data.pool:
        return images_of(pool_url_of(cfg.data.pool, store_url), ids)
    pool = catalog.split(cfg.data, cfg.seed)[2]
    return pool.subset(catalog.rows_of(ids, pool.ids))
