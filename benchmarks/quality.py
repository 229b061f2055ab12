"""Quality benchmark of issue 2's targets: the real round flow (embedded Prefect, a real
client process) over several seeds; prints mean ± std per method and checks the targets.

    .venv/bin/python benchmarks/quality.py --seeds 0 1 2 --budget 1000

Targets (client domain also in the pool, budget 1000): ECOS ≥ Random + 15 points,
ECOS within 3 points of the Oracle, ECOS's distractor share ≤ half of Random's.
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import pandas as pd  # noqa: E402
import typer  # noqa: E402

from ecos_core.config import RoundConfig  # noqa: E402
from ecos_core.report import markdown_table  # noqa: E402
from ecos_core.settings import Settings  # noqa: E402
from flows.round_flow import round_flow  # noqa: E402


def main(
    seeds: list[int] = typer.Option([0, 1, 2], help="Seeds (split, index, sampling, noise, training)."),
    budget: int = typer.Option(1000),
    client_domain: str = typer.Option("mnistm"),
    store: str = typer.Option(None, help="Store URL (default $ECOS_STORE)."),
    out: str = typer.Option("benchmarks/results", help="Folder for the CSV and markdown summary."),
) -> None:
    settings = Settings()
    rows = []
    for seed in seeds:
        cfg = RoundConfig.model_validate({"seed": seed, "domain_report": False, "data": {"client_domain": client_domain},
                                          "sampling": {"budget": budget}})  # fmt: skip
        result = round_flow(cfg, store or settings.store, None, True, settings.device_dir)
        rows += [{**r, "seed": seed} for r in result["results"]]
    frame = pd.DataFrame(rows)
    summary = frame.groupby("method").agg(
        accuracy_mean=("accuracy", "mean"), accuracy_std=("accuracy", "std"),
        distractor_share=("distractor_share", "mean"), client_domain_share=("client_domain_share", "mean"),
        epsilon=("epsilon", "first"), train_s=("train_s", "median"),
    ).reset_index()  # fmt: skip
    acc = summary.set_index("method")["accuracy_mean"] * 100
    dis = summary.set_index("method")["distractor_share"]
    checks = pd.DataFrame([
        {"target": "ECOS ≥ Random + 15 points", "value": f"{acc['ecos'] - acc['random']:+.1f}", "met": acc["ecos"] - acc["random"] >= 15},
        {"target": "ECOS within 3 points of Oracle", "value": f"{acc['ecos'] - acc['oracle']:+.1f}", "met": acc["oracle"] - acc["ecos"] <= 3},
        {"target": "ECOS distractor share ≤ ½ Random's", "value": f"{dis['ecos']:.3f} vs {dis['random']:.3f}", "met": dis["ecos"] <= dis["random"] / 2},
    ])  # fmt: skip
    text = (f"client {client_domain}, budget {budget}, seeds {seeds}\n\n{markdown_table(summary)}\n\n"
            f"{markdown_table(checks)}\n")  # fmt: skip
    print(text)
    os.makedirs(out, exist_ok=True)
    frame.to_csv(f"{out}/quality_{client_domain}_b{budget}.csv", index=False)
    with open(f"{out}/quality_{client_domain}_b{budget}.md", "w") as fh:
        fh.write(text)


if __name__ == "__main__":
    typer.run(main)
