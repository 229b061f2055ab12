"""Where a pool's objects live under its URL (one function per key, as ecos_core.storage.layout).

A pool is published by writing pool.json last: a reader that finds it finds a complete
catalog and every shard it names. Ingest progress lives under ingest/<run key>/ so a
killed ingest resumes where it stopped.
"""

from __future__ import annotations

POOL_JSON = "pool.json"
CATALOG = "catalog.parquet"


def shard(sha256: str) -> str:
    return f"shards/{sha256}.npy"


def ingest_rows(run_key: str, chunk: int) -> str:
    """The source rows of one chunk, written by the driver: a task gets a key, not the rows."""
    return f"ingest/{run_key}/rows-{chunk:06d}.parquet"


def ingest_chunk(run_key: str, chunk: int) -> str:
    """The catalog rows (and skipped rows) of one finished chunk: the resume checkpoint."""
    return f"ingest/{run_key}/chunk-{chunk:06d}.json"


def ingest_report(run_key: str) -> str:
    return f"ingest/{run_key}-report.json"
