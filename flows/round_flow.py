"""One ECOS outsourcing round, step by step as in the paper:

index the pool → send the probe → wait for each client's noisy coverage scores →
sample a proxy set per client (ECOS and the baselines) → train → evaluate → report.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from typing import Literal

from prefect import flow
from prefect.flow_runs import suspend_flow_run
from prefect.input import RunInput
from prefect.input.actions import read_flow_run_input
from prefect.input.run_input import keyset_from_base_key
from prefect.runtime import flow_run

from ecos_core.config import RoundConfig
from ecos_core.settings import Settings
from flows.train_flow import train_flow, train_on_deployment
from flows.index_flow import index_flow
from tasks.probe import publish_probe, published_index
from tasks.report import warn_if_no_watcher, write_answers, write_report
from tasks.responses import collect_responses
from tasks.sampling import save_round_config, select_proxy_set
from tasks.simulation import enroll_simulated_clients, launch_simulated_clients, oracle_counts
from tasks.steps import StepLog
from tasks.training import domain_local_accuracy


def new_round_id() -> str:
    return f"r{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


class ResponsesReady(RunInput):
    """What resumes a suspended round: the watcher saw every upload, or the deadline, or
    a probe that no longer verifies (probe_error: the round then fails, naming it)."""

    reason: str = "all expected clients answered"
    probe_error: str | None = None


def round_id_of_run(flow_run_id: str) -> str:
    """The round id of a deployed run started without one: stable across its re-runs."""
    return f"run-{flow_run_id}"


def _run_name() -> str:
    """Runs are named after their round in the UI, not with a random name."""
    return f"round-{flow_run.parameters.get('round_id') or round_id_of_run(str(flow_run.id))}"


def wait_for_responses(store_url: str, round_id: str, timeout_s: int) -> ResponsesReady:
    """Suspend until the watcher resumes this run; a re-run of a run resumed before finds
    the watcher's input and does not suspend (nor say it does) again."""
    keyset = keyset_from_base_key(f"suspended-responses-{round_id}")  # what suspend_flow_run uses for this key
    earlier = read_flow_run_input(keyset["response"], flow_run_id=flow_run.id)
    if earlier is not None:
        return ResponsesReady.model_validate(earlier)
    warn_if_no_watcher(store_url, round_id, timeout_s)
    return suspend_flow_run(wait_for_input=ResponsesReady, key=f"responses-{round_id}", timeout=timeout_s)


def gather_responses(store_url: str, round_id: str, cfg: RoundConfig, probe: dict, wait: str) -> dict:
    """The round's accepted answers: polled for (wait="poll"), or judged once the watcher
    resumed the suspended run; a probe the watcher found broken fails the round, naming it."""
    probe_error = None
    if wait == "suspend":
        ready = wait_for_responses(store_url, round_id, int(cfg.deadline_s) + 600)
        print(f"round {round_id} resumed: {ready.reason}")
        probe_error = ready.probe_error
    return collect_responses(store_url, round_id, list(cfg.clients), cfg.quorum, probe["deadline"], cfg.sigma,
                             probe["k"], cfg.poll_s, wait == "poll", probe_error)  # fmt: skip


@flow(name="ecos-round", log_prints=True, flow_run_name=_run_name)
def round_flow(
    cfg: RoundConfig = RoundConfig(),
    store_url: str | None = None,
    round_id: str | None = None,
    simulate_clients: bool = True,
    device_dir: str | None = None,
    wait: Literal["poll", "suspend"] = "poll",
    train_deployment: str | None = None,
) -> dict:
    """wait="poll": this run polls the store until the responses are in (embedded mode).
    wait="suspend": the run suspends, freeing its worker, until `ecos watch` resumes it;
    the resumed run re-runs from the top and every step before the wait is a cache hit.
    train_deployment: run training as that deployment (e.g. on a GPU pool) instead of a subflow."""
    settings = Settings()
    store_url, device_dir = store_url or settings.store, device_dir or settings.device_dir
    round_id = round_id or round_id_of_run(str(flow_run.id))
    cfg = cfg if simulate_clients else cfg.for_real_devices()
    steps = StepLog(store_url, round_id)
    indexed = index_flow(cfg, store_url)
    feature_keys, index_key = indexed["features"]["keys"], indexed["index"]["key"]
    steps.add("features", indexed["features"]["seconds"])
    steps.lap("index", minus=indexed["features"]["seconds"])

    if simulate_clients:
        enroll_simulated_clients(store_url, list(cfg.clients), device_dir)
    adapted = indexed["features"].get("adapted")  # the combined feature space's CNN, shipped in the probe
    probe = publish_probe(store_url, round_id, index_key, indexed["features"]["backbone"], cfg.sigma, cfg.delta,
                          cfg.deadline_s, list(cfg.clients), cfg.index.coverage, adapted)  # fmt: skip
    index_key, adapted = published_index(round_id, probe, index_key, bool(cfg.data.pool))
    if simulate_clients:
        launch_simulated_clients(store_url, cfg, round_id, device_dir)
    steps.lap("probe")
    steps.mark("probe published")
    responses = gather_responses(store_url, round_id, cfg, probe, wait)
    steps.lap("wait for responses", since_mark="probe published")
    write_answers(store_url, round_id, list(cfg.clients), responses)

    save_round_config(store_url, round_id, cfg)
    selections = []
    for client_id, answer in responses["accepted"].items():
        exact = oracle_counts(store_url, cfg, feature_keys, index_key, client_id, adapted) if "oracle" in cfg.sampling.samplers else None
        for method in cfg.sampling.samplers:
            picked = select_proxy_set(store_url, cfg, feature_keys, index_key, round_id, client_id, method,
                                      answer["scores"], exact)  # fmt: skip
            selections.append({**picked, "client_id": client_id})
    steps.lap("sampling")
    local_clients = list(responses["accepted"]) if cfg.local_baseline else []
    if train_deployment:  # e.g. on the GPU pool
        runs = train_on_deployment(train_deployment, cfg, round_id, selections, local_clients, store_url)
    else:
        runs = train_flow(cfg, round_id, selections, local_clients, store_url)
    steps.lap("training")
    # every built-in domain trained alone; an ingested pool has no such split
    domain_rows = domain_local_accuracy(store_url, cfg) if cfg.domain_report and not cfg.data.pool else []
    steps.lap("domain check")

    return write_report(store_url, cfg, round_id, runs, selections, probe, responses, steps.steps, domain_rows,
                        indexed["features"]["cache_hits"], simulate_clients, device_dir)  # fmt: skip
