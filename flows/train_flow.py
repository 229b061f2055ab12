"""Training as a flow of its own, so a deployment can route it to a GPU work pool while
features and sampling stay on CPU workers (Lightning's accelerator/devices/strategy come
from the round's TrainConfig)."""

from __future__ import annotations

from prefect import flow
from prefect.deployments import run_deployment

from ecos_core.config import RoundConfig
from flows import run_names
from ecos_core.settings import Settings
from tasks.training import read_training_rows, train_local, train_on_selection


@flow(name="ecos-train", log_prints=True, flow_run_name=run_names.train_run)
def train_flow(
    cfg: RoundConfig, round_id: str, selections: list[dict], local_clients: list[str], store_url: str | None = None
) -> list[dict]:
    store_url = store_url or Settings().store
    runs = [train_on_selection(store_url, cfg, round_id, s["client_id"], s["method"], s["key"]) for s in selections]
    return runs + [train_local(store_url, cfg, round_id, c) for c in local_clients]


def train_on_deployment(
    deployment: str, cfg: RoundConfig, round_id: str, selections: list[dict], local_clients: list[str], store_url: str
) -> list[dict]:
    """Run this flow as `deployment` (another work pool, e.g. GPUs), wait, and read the
    rows it left in the store."""
    run = run_deployment(deployment, timeout=None, parameters={
        "cfg": cfg.model_dump(mode="json"), "round_id": round_id, "selections": selections,
        "local_clients": local_clients, "store_url": store_url})  # fmt: skip
    if not run.state or not run.state.is_completed():
        raise RuntimeError(f"training deployment {deployment} ended {run.state and run.state.name}")
    return read_training_rows(store_url, round_id, selections, local_clients)
