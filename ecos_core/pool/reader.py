"""Reading a published pool from a Store: its pool.json, catalog and shards, and the
images of any ids, shard by shard. The flows (through tasks/pool.py, which caches) and
the benchmark read pools only through here."""

from __future__ import annotations

import json

import numpy as np

from ecos_core.pool import layout
from ecos_core.pool.catalog import PoolCatalog
from ecos_core.pool.shards import decode_shard
from ecos_core.storage.store import Store
from ecos_core.types import ImageSet

POOL_FORMAT = "ecos-pool-v1"


def parse_meta(raw: bytes, where: str) -> dict:
    meta = json.loads(raw)
    if meta.get("format") != POOL_FORMAT:
        raise ValueError(f"{where}: not an ecos pool (format {meta.get('format')!r})")
    return meta


def read_catalog(store: Store) -> PoolCatalog:
    return PoolCatalog.from_parquet(store.read_bytes(layout.CATALOG), store.uri(layout.CATALOG))


def read_shard(store: Store, sha256: str) -> np.ndarray:
    """A shard's images, refused if its bytes changed since ingest."""
    key = layout.shard(sha256)
    return decode_shard(store.read_bytes(key), sha256, store.uri(key))


def gather_images(meta: dict, pool: PoolCatalog, ids: np.ndarray, shard_of) -> ImageSet:  # noqa: ANN001 - sha -> images
    """The images of `ids` (in that order), reading only the shards that hold them."""
    rows = pool.locate(ids)
    size = int(meta["image_size"])
    images = np.empty((len(rows), size, size, 3), dtype=np.uint8)
    for sha, group in rows.groupby("shard", sort=False):
        images[group.index.to_numpy()] = shard_of(sha)[group["row"].to_numpy()]
    return ImageSet(images, rows["label"].to_numpy(np.int64), rows["domain"].to_numpy(str), rows["id"].to_numpy(str))


def is_pool(store: Store) -> bool:
    return store.exists(layout.POOL_JSON)


def load_pool(store: Store) -> ImageSet:
    """Every image of a pool, in catalog order: for pools that fit in memory (the benchmark)."""
    meta = parse_meta(store.read_bytes(layout.POOL_JSON), store.uri(layout.POOL_JSON))
    pool = read_catalog(store)
    return gather_images(meta, pool, pool.ids, lambda sha: read_shard(store, sha))
