"""The watcher: resumes suspended rounds once their clients' uploads are in the store.

A suspended round holds no worker slot. This small loop (one process, `ecos watch`)
asks the Prefect API for suspended `ecos-round` runs, looks at each round's uploads,
and resumes the run when every expected client has a valid response or the deadline
has passed. Chosen over having devices call the Prefect API: devices then need no
Prefect credentials, only their pre-signed upload URL.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

from prefect import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.flow_runs import resume_flow_run

from ecos_core import layout
from ecos_core.config import RoundConfig
from ecos_core.protocol import ProtocolError, decode_probe
from ecos_core.settings import Settings
from flows.round_flow import round_id_of_run
from tasks import catalog
from tasks.responses import check_upload, client_keys


def suspended_rounds() -> list[FlowRun]:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["ecos-round"])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))),
        )


def readiness(run: FlowRun) -> str | None:
    """Why `run` may resume now, or None to keep it waiting."""
    params = run.parameters
    cfg = RoundConfig.model_validate(params.get("cfg") or {})
    round_id = params.get("round_id") or round_id_of_run(str(run.id))
    store = catalog.store(params.get("store_url") or Settings().store)
    store.invalidate()
    if not store.exists(layout.probe_json(round_id)):
        return None
    probe, _ = decode_probe(store.read_bytes(layout.probe_json(round_id)), store.read_bytes(layout.probe_centroids(round_id)))
    clients = list(cfg.clients)
    key_for = client_keys(store, clients)
    valid = set()
    for key in store.list(layout.responses_prefix(round_id)):
        try:
            valid.add(check_upload(store, key, store.read_bytes(key, 1 << 16), round_id, clients, probe.k, probe.sigma, key_for).client_id)
        except (ProtocolError, ValueError):
            continue  # refused uploads are ledgered by the round itself
    if valid >= set(clients):
        return f"all {len(clients)} expected clients answered"
    if datetime.now(timezone.utc) >= probe.deadline:
        return f"deadline passed with {len(valid)} of {len(clients)} answers"
    return None


def sweep() -> list[tuple[str, str]]:
    resumed = []
    for run in suspended_rounds():
        reason = readiness(run)
        if reason:
            resume_flow_run(run.id, run_input={"reason": reason})
            resumed.append((str(run.id), reason))
    return resumed


def watch(interval_s: float = 2.0, once: bool = False) -> None:
    print(f"watching suspended ecos-round runs every {interval_s:g} s", flush=True)
    while True:
        for run_id, reason in sweep():
            print(f"resumed flow run {run_id}: {reason}", flush=True)
        if once:
            return
        time.sleep(interval_s)
