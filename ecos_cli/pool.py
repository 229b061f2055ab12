"""`ecos pool`: bring your own pool: ingest a manifest, an image folder or built-in
domains into content-addressed shards at any fsspec URL, and look at what a pool holds."""

from __future__ import annotations

import json
from typing import Optional

import typer

pool_app = typer.Typer(help="Your own pool: ingest images into shards (local or s3://), show a pool.", no_args_is_help=True)

DaskAddressOpt = typer.Option(None, "--dask-address", help="An existing Dask cluster (tcp://host:8786); default: a local one.")
WorkersOpt = typer.Option(None, "--workers", min=1, help="Worker processes of the local Dask cluster (default: one per core).")


@pool_app.command("ingest")
def ingest(
    source: str = typer.Argument(..., help="A manifest (.csv/.parquet: uri, domain[, label, id]), an image folder "
                                           "(root/<class>/<file>), or builtin:<domain>[:<count>]."),  # fmt: skip
    to: str = typer.Option(..., "--to", help="Where the pool lives: a folder or s3://bucket/prefix. Ingesting more into "
                                             "it adds shards."),  # fmt: skip
    on_error: str = typer.Option("fail", "--on-error", help="fail: stop at the first bad row, publish nothing; "
                                                            "skip: leave bad rows out and list them."),  # fmt: skip
    shard_size: int = typer.Option(1024, min=1, help="Images per shard."),
    image_size: int = typer.Option(28, min=8, help="Side of the square each image is resized to, once, at ingest."),
    domain: Optional[str] = typer.Option(None, help="Domain of an image folder's images (default: the folder's name)."),
    dask_address: Optional[str] = DaskAddressOpt,
    workers: Optional[int] = WorkersOpt,
) -> None:
    """Decode and resize every image once, on every Dask worker in parallel, into shards plus
    a parquet catalog. Resumable (a killed ingest continues) and idempotent (rows already in
    the pool are skipped)."""
    if on_error not in ("fail", "skip"):
        raise ValueError(f"--on-error must be fail or skip, got {on_error!r}")
    from ecos_core.pool.sources import check_source

    check_source(source)  # within a second, before Prefect and Dask start
    from flows.ingest_flow import ingest_flow

    report = ingest_flow(source, to, shard_size, image_size, on_error, domain, dask_address, workers)
    for row in report["skipped"]:
        typer.echo(f"skipped row {row['source_row']} ({row['uri']}): {row['reason']}", err=True)
    typer.echo(f"{to}: {report['ingested']} images ingested in {len(report['new_shards'])} new shards, "
               f"{report['already_in_pool']} already there, {len(report['skipped'])} skipped; "
               f"the pool holds {report['n_images']} images")  # fmt: skip


@pool_app.command("show")
def show(url: str = typer.Argument(..., help="A pool's URL (as given to --to).")) -> None:
    """What a pool holds: images, shards, domains, labelled share."""
    from tasks.pool import require_pool

    meta, _ = require_pool(url)
    summary = {k: v for k, v in meta.items() if k != "shards"} | {"n_shards": len(meta["shards"])}
    typer.echo(json.dumps(summary, indent=1))
