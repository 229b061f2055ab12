"""The round's report: results table, step times, per-domain check, plot; in the store
and as Prefect artifacts."""

from __future__ import annotations

import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from ecos_core import layout
from ecos_core.config import RoundConfig
from ecos_core.data.builtin import DISTRACTOR_DOMAINS
from ecos_core.privacy import gaussian_epsilon
from ecos_core.report import domain_mix, markdown_table, results_plot
from tasks import catalog
from tasks.common import STORAGE_RETRIES
from tasks.simulation import client_shard

COLUMNS = ["client_id", "method", "accuracy", "proxy_size", "unspent", "client_domain_share", "distractor_share", "epsilon",
           "bytes_down", "bytes_up", "select_s", "train_s", "epochs", "final_loss"]  # fmt: skip


def results_frame(cfg: RoundConfig, runs: list[dict], selections: list[dict], probe: dict, responses: dict) -> pd.DataFrame:
    """One row per (client, method), with the privacy and communication cost of each."""
    eps = gaussian_epsilon(cfg.sigma, cfg.delta)
    select_s = {(s["client_id"], s["method"]): s["seconds"] for s in selections}
    unspent = {(s["client_id"], s["method"]): s["unspent"] for s in selections}
    rows = []
    for run in runs:
        domains = pd.Series(run["domains"])
        client, method = run["client_id"], run["method"]
        up = responses["accepted"].get(client, {}).get("bytes", 0)
        cost = {  # (ε, bytes down, bytes up) of what the method needs from the client
            "ecos": (eps, probe["bytes"], up),
            # the oracle needs the client's true features: every local sample's d floats, no privacy
            "oracle": (float("inf"), 0, 4 * probe["dim"] * len(client_shard(cfg, client))),
            "local": (0.0, 0, 0),
        }.get(method, (0.0, 0, 0))
        rows.append({**run, "epsilon": cost[0], "bytes_down": cost[1], "bytes_up": cost[2],
                     "client_domain_share": float((domains == cfg.data.client_domain).mean()),
                     "distractor_share": float(domains.isin(DISTRACTOR_DOMAINS).mean()),
                     "select_s": select_s.get((client, method), 0.0), "unspent": unspent.get((client, method), 0)})  # fmt: skip
    return pd.DataFrame(rows)[COLUMNS]


@task(name="write-report", **STORAGE_RETRIES)
def write_report(
    store_url: str, cfg: RoundConfig, round_id: str, runs: list[dict], selections: list[dict], probe: dict,
    responses: dict, steps: dict[str, float], domain_rows: list[dict], cache_hits: list[str],
) -> dict:  # fmt: skip
    store = catalog.store(store_url)
    results = results_frame(cfg, runs, selections, probe, responses)
    mix = domain_mix({r["method"]: r["domains"] for r in runs if r["client_id"] == cfg.clients[0]})
    step_table = pd.DataFrame({"step": list(steps), "seconds": list(steps.values())})
    domains = pd.DataFrame(domain_rows)
    md = "\n\n".join([
        f"# ECOS round `{round_id}`",
        f"Client domain **{cfg.data.client_domain}** ({cfg.data.regime}), budget {cfg.sampling.budget}, K={cfg.index.k}, "
        f"σ={cfg.sigma} → ε={gaussian_epsilon(cfg.sigma, cfg.delta):.3f} at δ={cfg.delta:g} (dp-accounting PLD), seed {cfg.seed}.",
        f"Feature cache: {'hit for ' + ', '.join(cache_hits) if cache_hits else 'all computed'}.",
        "## Results (client test accuracy)", markdown_table(results),
        "## Domain mix of each proxy set", markdown_table(mix.reset_index(names="method")),
        "## Every domain alone (Local: its own train part → its test part)",
        markdown_table(domains) if not domains.empty else "(not computed)",
        "## Time per step (s)", markdown_table(step_table, ".1f"),
        "![results](results.png)",
    ])  # fmt: skip
    keys = {"results_csv": "results.csv", "results_md": "results.md", "report": "report.md", "plot": "results.png"}
    store.write_bytes(layout.round_key(round_id, keys["results_csv"]), results.to_csv(index=False).encode())
    store.write_bytes(layout.round_key(round_id, keys["results_md"]), markdown_table(results).encode())
    store.write_bytes(layout.round_key(round_id, keys["report"]), md.encode())
    store.write_bytes(layout.round_key(round_id, keys["plot"]),
                      results_plot(results, mix, f"round {round_id}: client {cfg.data.client_domain}"))  # fmt: skip
    manifest = {"round_id": round_id, "config": cfg.model_dump(mode="json"),
                "artifacts": {n: store.uri(layout.round_key(round_id, k)) for n, k in keys.items()}}  # fmt: skip
    store.write_json(layout.round_key(round_id, "manifest.json"), manifest)
    create_table_artifact(results.round(4).replace({float("inf"): "inf"}).to_dict(orient="records"), key="ecos-round-results",
                          description=f"ECOS round {round_id}: results per client and method")  # fmt: skip
    create_markdown_artifact(md, key="ecos-round-report", description=f"ECOS round {round_id}")
    return {"results": results.to_dict(orient="records"), "steps": steps, "domains": domain_rows,
            "report_uri": store.uri(layout.round_key(round_id, keys["report"])), "manifest": manifest}  # fmt: skip
