"""Automated client labeling: the ε–label-quality curve of each labeler, on ECOS's selection.

    .venv/bin/python benchmarks/label_sweep.py --out benchmarks/results/label_sweep

For each client domain and seed of benchmarks/grids/client_labeling.json, ECOS selects its
proxy set (σ=6.1, the grid's setting), then every labeler configuration labels it:
  clusters  one noisy label histogram over G groups of the selection (σ_L, G swept)
  knn       Private-kNN per selected sample (k, vote σ, Poisson subsample rate q swept)
and we record the composed ε (coverage scores + labels, dp-accounting PLD, δ=1e-5), the
share of the selection that gets a label, and how often a given label is right. No
training: `ecos bench quality --config benchmarks/grids/client_labeling.json` trains on the
chosen point. Writes sweep.csv, sweep.md and epsilon_vs_agreement.png.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CLUSTERS = [{"client_labeler": "clusters", "label_sigma": s, "label_groups": g}
            for s, g in itertools.product((1.0, 1.5, 2.0, 3.0, 5.0), (20, 35, 50))]  # fmt: skip
KNN = [{"client_labeler": "knn", "knn_k": k, "knn_sigma": s, "knn_sample_rate": q}
       for k, s, q in itertools.product((10, 30), (2.0, 4.0, 8.0), (0.05, 0.1, 0.3))]  # fmt: skip


def sweep(grid: Path, store_url: str) -> pd.DataFrame:
    from ecos_core.benchmark.run import BenchContext, GridSpec
    from ecos_core.benchmark.spaces import client_labels
    from ecos_core.sampling.coverage import add_noise
    from ecos_core.privacy.accounting import gaussian_event
    from ecos_core.labeling.private_knn import combined_epsilon
    from ecos_core.sampling.samplers import SamplingPool, make_sampler
    from ecos_core.storage.store import Store

    spec = GridSpec.model_validate(json.loads(grid.read_text()))
    ctx, sigma, rows = BenchContext(spec, Store(store_url)), spec.sigmas[0], []
    for seed, domain in itertools.product(spec.seeds, spec.client_domains):
        s = ctx.setup(domain, spec.regimes[0], seed)
        noisy = add_noise(s.counts, sigma, seed=seed)
        picked = make_sampler("ecos", seed=seed, sigma=sigma, noisy_scores=noisy, exact_counts=s.counts).select(
            SamplingPool(s.pool_features, s.index.assignments, s.index.centroids), spec.budgets[0])
        truth = s.pool.labels[picked]
        for option in CLUSTERS + KNN:
            answer = client_labels(spec.model_copy(update=option), s.label_pool[picked], s.label_train,
                                   s.train.labels, seed)  # fmt: skip
            given = answer.labels >= 0
            rows.append({**option, "client_domain": domain, "seed": seed,
                         "epsilon": combined_epsilon([gaussian_event(sigma), *answer.events], spec.delta),
                         "labelled": float(given.mean()),
                         "agreement": float((answer.labels[given] == truth[given]).mean()) if given.any() else np.nan})  # fmt: skip
        print(f"{domain} seed {seed}: {len(CLUSTERS) + len(KNN)} labelers", file=sys.stderr, flush=True)
    return pd.DataFrame(rows)


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    params = ["client_labeler", "label_sigma", "label_groups", "knn_k", "knn_sigma", "knn_sample_rate"]
    table = df.groupby(params, dropna=False)[["epsilon", "labelled", "agreement"]].mean().reset_index()
    return table.sort_values(["client_labeler", "epsilon"]).round(3)


def plot(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, part in table.groupby("client_labeler"):
        ax.scatter(part["epsilon"], part["agreement"], label=name, alpha=0.8)
    ax.set(xscale="log", xlabel="composed ε (scores + labels, δ=1e-5)", ylabel="given labels that are right",
           title="Automated client labeling on ECOS's selection (3 clients × 3 seeds)")  # fmt: skip
    ax.axvline(4.0, color="grey", ls="--", lw=1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(grid: Path = typer.Option(REPO / "benchmarks/grids/client_labeling.json"),
         store: str = typer.Option("ecos-store", help="Store with the cached features (as `ecos bench`)."),
         out: Path = typer.Option(REPO / "benchmarks/results/label_sweep")) -> None:  # fmt: skip
    df = sweep(grid, store)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "sweep.csv", index=False)
    table = summarise(df)
    (out / "sweep.md").write_text(table.to_markdown(index=False) + "\n")
    plot(table, out / "epsilon_vs_agreement.png")
    print(table.to_markdown(index=False))


if __name__ == "__main__":
    typer.run(main)
