"""Training as a flow of its own, so a deployment can route it to a GPU work pool while
features and sampling stay on CPU workers (Lightning's accelerator/devices/strategy come
from the round's TrainConfig)."""

from __future__ import annotations

from prefect import flow

from ecos_core.config import RoundConfig
from ecos_core.settings import Settings
from tasks.training import train_local, train_on_selection


@flow(name="ecos-train", log_prints=True)
def train_flow(
    cfg: RoundConfig, round_id: str, selections: list[dict], local_clients: list[str], store_url: str | None = None
) -> list[dict]:
    store_url = store_url or Settings().store
    runs = [train_on_selection(store_url, cfg, round_id, s["client_id"], s["method"], s["key"]) for s in selections]
    return runs + [train_local(store_url, cfg, round_id, c) for c in local_clients]
