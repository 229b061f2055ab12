"""Ingest a user's pool: list the source, decode it in chunks on every Dask worker, publish.

Only rows whose id the pool does not hold yet are ingested, so adding images to a
manifest adds shards and leaves the old ones (and their cached features) alone.
"""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger

from ecos_core.storage.content import content_key
from flows import run_names
from ecos_core.pool import layout
from ecos_core.pool.ingest import MAX_PIXELS, IngestError, chunk_bounds
from ecos_core.pool.sources import ROW_COLUMNS, source_rows
from tasks import catalog
from tasks.pool import ingest_chunk, publish_pool, read_pool, write_chunk_rows
from tasks.runner import dask_runner


@flow(name="ecos-pool-ingest-chunks", flow_run_name="ingest-chunks-{chunks}")
def _ingest_chunks(pool_url: str, run_key: str, chunks: int, image_size: int, on_error: str, max_pixels: int) -> list[dict]:
    futures = ingest_chunk.map(pool_url, run_key, list(range(chunks)), image_size, on_error, max_pixels)
    return [f.result() for f in futures]


@flow(name="ecos-pool-ingest", log_prints=True, flow_run_name=run_names.ingest_run)
def ingest_flow(
    source: str,
    to: str,
    shard_size: int = 1024,
    image_size: int = 28,
    on_error: Literal["fail", "skip"] = "fail",
    domain: str | None = None,
    dask_address: str | None = None,
    workers: int | None = None,
    max_pixels: int = MAX_PIXELS,
) -> dict:
    """on_error="fail": the first bad row stops the ingest and nothing is published;
    "skip": bad rows are left out and listed in the report."""
    log = get_run_logger()
    meta, pool = read_pool(to)
    if meta is not None and meta["image_size"] != image_size:
        raise ValueError(f"{to}: the pool holds {meta['image_size']} px images; --image-size {image_size} would mix sizes")
    rows = source_rows(source, domain)
    new = rows[~rows["id"].isin(pool.table["id"])].reset_index(drop=True)
    run_key = content_key(*(new[c].to_numpy(dtype=str) for c in ROW_COLUMNS), image_size, shard_size, on_error,
                          max_pixels, pool.shards())  # fmt: skip
    chunks = write_chunk_rows(to, run_key, new, chunk_bounds(len(new), shard_size))
    listed, already = len(rows), len(rows) - len(new)
    del rows, new, pool  # the listing now lives in the chunks' row files
    log.info("%s: %d rows, %d already in the pool, %d to ingest in %d chunks", source, listed, already, listed - already,
             chunks)  # fmt: skip
    records = []
    if chunks:
        runner = _ingest_chunks.with_options(task_runner=dask_runner(dask_address, workers))
        try:
            records = runner(to, run_key, chunks, image_size, on_error, max_pixels)
        except IngestError as err:
            raise IngestError(f"{source}: {err}; nothing was published (--on-error skip leaves bad rows out)") from None
    published = publish_pool(to, run_key, chunks, image_size, shard_size)
    skipped = [e for r in records for e in r["skipped"]]
    report = {"source": source, "pool": to, "rows": listed, "already_in_pool": already,
              "ingested": sum(r["n"] for r in records), "new_shards": sorted({r["shard"] for r in records if r["n"]}),
              "skipped": skipped, "n_images": published["n_images"]}  # fmt: skip
    catalog.store(to).write_json(layout.ingest_report(run_key), report)
    return report
