"""One ECOS outsourcing round, step by step as in the paper:

index the pool → send the probe → wait for each client's noisy coverage scores →
sample a proxy set per client (ECOS and the baselines) → train → evaluate → report.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from prefect import flow

from ecos_core.config import RoundConfig
from ecos_core.timing import Stopwatch
from flows.index_flow import index_flow
from tasks.probe import publish_probe
from tasks.report import write_report
from tasks.responses import collect_responses
from tasks.sampling import select_proxy_set
from tasks.simulation import enroll_simulated_clients, launch_simulated_clients, oracle_counts
from tasks.training import domain_local_accuracy, train_local, train_on_selection


def new_round_id() -> str:
    return f"r{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


@flow(name="ecos-round", log_prints=True)
def round_flow(
    cfg: RoundConfig = RoundConfig(),
    store_url: str = "./ecos-store",
    round_id: str | None = None,
    simulate_clients: bool = True,
    device_dir: str = "./ecos-devices",
) -> dict:
    round_id = round_id or new_round_id()
    watch = Stopwatch()
    indexed = index_flow(cfg, store_url)
    feature_keys, index_key = indexed["features"]["keys"], indexed["index"]["key"]
    watch.add("features", indexed["features"]["seconds"])
    watch.lap("index", minus=indexed["features"]["seconds"])

    if simulate_clients:
        enroll_simulated_clients(store_url, list(cfg.clients), device_dir)
    probe = publish_probe(store_url, round_id, index_key, indexed["features"]["backbone"], cfg.sigma, cfg.delta,
                          cfg.deadline_s, list(cfg.clients))  # fmt: skip
    if simulate_clients:
        launch_simulated_clients(store_url, cfg, round_id, device_dir)
    watch.lap("probe")
    responses = collect_responses(store_url, round_id, list(cfg.clients), cfg.quorum, probe["deadline"], cfg.sigma,
                                  probe["k"], cfg.poll_s)  # fmt: skip
    watch.lap("wait for responses")

    selections, runs = [], []
    for client_id, answer in responses["accepted"].items():
        exact = oracle_counts(store_url, cfg, feature_keys, index_key, client_id) if "oracle" in cfg.sampling.samplers else None
        for method in cfg.sampling.samplers:
            picked = select_proxy_set(store_url, cfg, feature_keys, index_key, round_id, client_id, method,
                                      answer["scores"], exact)  # fmt: skip
            selections.append({**picked, "client_id": client_id})
    watch.lap("sampling")
    for s in selections:
        runs.append(train_on_selection(store_url, cfg, round_id, s["client_id"], s["method"], s["key"]))
    if cfg.local_baseline:
        runs += [train_local(store_url, cfg, round_id, c) for c in responses["accepted"]]
    watch.lap("training")
    domain_rows = domain_local_accuracy(store_url, cfg) if cfg.domain_report else []
    watch.lap("domain check")

    return write_report(store_url, cfg, round_id, runs, selections, probe, responses, watch.laps, domain_rows,
                        indexed["features"]["cache_hits"])  # fmt: skip
