"""`ecos bench`: the benchmark grid (Table 4), resumable cell by cell through the store."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

bench_app = typer.Typer(help="Benchmarks: the Table-4 grid of samplers × applications × client domains.",
                        no_args_is_help=True)  # fmt: skip


def _domain_sizes(text: str) -> dict[str, int]:
    sizes = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, n = item.partition("=")
        if not sep or not n.strip().isdigit():
            raise ValueError(f"--domain-sizes wants name=count,... got {item!r}")
        sizes[name.strip()] = int(n)
    return sizes


def build_spec(config: Optional[Path], overrides: dict):
    """GridSpec from an optional JSON file, flags (non-None) override it."""
    from ecos_core.benchmark.run import GridSpec

    base = json.loads(config.read_text()) if config else {}
    train = dict(base.get("train", {}))
    for name, value in overrides.items():
        if value is None:
            continue
        if name.startswith("train."):
            train[name.removeprefix("train.")] = value
        else:
            base[name] = value
    if train:
        base["train"] = train
    return GridSpec.model_validate(base)


def run_grid(spec, store, show_bar: bool = True, cache_dir: str | None = None):  # noqa: ANN201
    """Run every cell not yet in the store; returns (rows of all cells, number computed now,
    the grid's key, its BenchContext)."""
    from tqdm import tqdm

    from ecos_core.benchmark import run as bench

    ctx = bench.BenchContext(spec, store, cache_dir)
    ctx.check()  # a client domain missing from the pool fails here, before anything is written
    key = bench.grid_key(spec, ctx.data_key())
    store.write_json(f"bench/{key}/spec.json", spec.model_dump(mode="json"))
    rows, computed = [], 0
    cells = bench.grid_cells(spec)
    with tqdm(cells, desc="bench cells", unit="cell", file=sys.stderr, disable=not show_bar) as bar:
        for cell in bar:
            cell_path = f"bench/{key}/cells/{bench.cell_key(cell, spec)}.json"
            if store.exists(cell_path):
                rows.append(store.read_json(cell_path))
                continue
            bar.set_postfix_str(f"{cell.client_domain}/{cell.application}/{cell.sampler}/b{cell.budget}/s{cell.seed}")
            row = bench.run_cell(cell, ctx)
            store.write_json(cell_path, row)  # written at once: an interruption loses at most this cell
            rows.append(row)
            computed += 1
    return rows, computed, key, ctx


@bench_app.command("quality")
def quality(
    client_domains: Optional[str] = typer.Option(None, help="Comma-separated client domains (default mnistm)."),
    regimes: Optional[str] = typer.Option(None, help="Comma-separated: id+ood, ood (default id+ood)."),
    budgets: Optional[str] = typer.Option(None, help="Comma-separated proxy-set sizes (default 1000)."),
    samplers: Optional[str] = typer.Option(None, help="Comma-separated: ecos, oracle, random, kcenter, full, local."),
    applications: Optional[str] = typer.Option(None, help="Comma-separated: labeling, compression, client_labeling."),
    seeds: Optional[str] = typer.Option(None, help="Comma-separated seeds (default 0,1,2)."),
    sigmas: Optional[str] = typer.Option(None, help="Comma-separated noise std of the coverage scores (ECOS only)."),
    k: Optional[int] = typer.Option(None, "--k", help="Number of centroids K (default 100)."),
    domain_sizes: Optional[str] = typer.Option(None, help="Pool sizes, e.g. mnist=3000,mnistm=4000,animal=10000."),
    n_client_train: Optional[int] = typer.Option(None, help="Client train samples (default 1000)."),
    n_client_test: Optional[int] = typer.Option(None, help="Client test samples (default 1000)."),
    max_epochs: Optional[int] = typer.Option(None, help="Training epochs (default 20)."),
    max_steps: Optional[int] = typer.Option(None, help="Training steps cap (default 900)."),
    batch_size: Optional[int] = typer.Option(None, help="Training batch size (default 64)."),
    teacher_size: Optional[int] = typer.Option(None, help="Labelled pool samples of the compression teacher (default 3000)."),
    pool_data: Optional[str] = typer.Option(None, help="A user's pool: an ingested pool (ecos pool ingest), an image folder or a manifest (uri,label,domain) URL."),
    distractor_domains: Optional[str] = typer.Option(None, help="Comma-separated off-task domains of the pool."),
    config: Optional[Path] = typer.Option(None, help="GridSpec as JSON; flags override it."),
    store: Optional[str] = typer.Option(None, "--store", help="Store URL (default $ECOS_STORE or ./ecos-store)."),
    out: Path = typer.Option(Path("benchmarks/results/bench"), help="Folder for results.csv, table4.md and the plots."),
    progress: bool = typer.Option(True, help="Show the progress bar."),
) -> None:
    """Run the grid (cells already in the store are reused), write results.csv, table4.md and
    plots to the store and --out, and print the Table-4 markdown."""
    from pydantic import ValidationError

    try:
        spec = build_spec(config, {
            "client_domains": client_domains, "regimes": regimes, "budgets": budgets, "samplers": samplers,
            "applications": applications, "seeds": seeds, "sigmas": sigmas, "k": k,
            "domain_sizes": _domain_sizes(domain_sizes) if domain_sizes else None, "n_client_train": n_client_train,
            "n_client_test": n_client_test, "train.max_epochs": max_epochs, "train.max_steps": max_steps,
            "train.batch_size": batch_size, "teacher_size": teacher_size, "pool_data": pool_data,
            "distractor_domains": distractor_domains,
        })  # fmt: skip
    except ValidationError as err:
        msgs = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'grid'}: {e['msg'].removeprefix('Value error, ')}"
                         + ("" if e["type"] == "value_error" else f" (got {e.get('input')!r})")
                         for e in err.errors())  # fmt: skip
        typer.echo(f"error: invalid benchmark grid: {msgs}", err=True)
        raise typer.Exit(2) from None
    except (ValueError, OSError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None

    import pandas as pd

    from ecos_core.benchmark import run as bench
    from ecos_core.benchmark.report import all_plots, costs_markdown, proxy_mix_markdown, table4_markdown
    from ecos_core.settings import Settings
    from ecos_core.storage.store import Store

    settings = Settings()
    url = store or settings.store
    st = Store(url, settings.storage_options(url))
    try:
        rows, computed, key, ctx = run_grid(spec, st, show_bar=progress, cache_dir=settings.cache_dir)
        refs = {(d, r): ctx.reference_costs(d, r) for d in spec.client_domains for r in spec.regimes}
    except (ValueError, FileNotFoundError) as err:  # the pool's data: cells already stored stay
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    frame = pd.DataFrame(rows)
    md = table4_markdown(frame)
    costs = costs_markdown(frame, refs)
    plots = all_plots(frame)
    out.mkdir(parents=True, exist_ok=True)
    csv = frame.to_csv(index=False)
    files = {"results.csv": csv.encode(), "table4.md": md.encode(), "costs.md": costs.encode(),
             "proxy_mix.md": proxy_mix_markdown(frame).encode(), **plots}  # fmt: skip
    for name, data in files.items():
        st.write_bytes(f"bench/{key}/{name}", data)
        (out / name).write_bytes(data)
    typer.echo(md)
    typer.echo(costs)
    typer.echo(f"{len(rows)} cells ({computed} computed, {len(rows) - computed} reused) · grid {key} · "
               f"written to {st.uri(f'bench/{key}')} and {out}")  # fmt: skip
