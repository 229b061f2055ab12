"""Train and evaluate the client's model on a proxy set (labels: the pool's ground truth,
standing in for the annotators of selective manual labeling)."""

from __future__ import annotations

import io

import numpy as np
from prefect import task

from ecos_core.storage import layout
from ecos_core.config import RoundConfig
from ecos_core.data.split import split_client_pool
from ecos_core.storage.content import content_key
from ecos_core.types import ImageSet
from tasks import catalog
from tasks.pool import round_pool_images
from tasks.common import STORAGE_RETRIES
from tasks.simulation import client_shard


def _fit(train: ImageSet, test: ImageSet | None, cfg: RoundConfig) -> tuple[dict, dict]:
    from ecos_core.training.train import accuracy, train_classifier  # here: the flow's process starts without lightning

    result = train_classifier(train, cfg.train, cfg.seed)
    row = {"accuracy": accuracy(result.model, test) if cfg.train.evaluate else float("nan"), "epochs": result.epochs, "steps": result.steps,
           "final_loss": result.final_loss, "train_s": result.seconds, "proxy_size": len(train)}  # fmt: skip
    return row, result.model.net.state_dict()


def _save_model(store_url: str, round_id: str, client_id: str, method: str, state: dict) -> str:
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)  # a plain tensor dict: loadable with torch.load(weights_only=True)
    key = layout.round_key(round_id, f"models/{client_id}/{method}.pt")
    catalog.store(store_url).write_bytes(key, buf.getvalue())
    return key


def train_once(store_url: str, cfg: RoundConfig, round_id: str, client_id: str, method: str, train: ImageSet) -> dict:
    """Train unless this (client, method) already finished in an earlier attempt of the
    round: its row in the store is the checkpoint a re-run resumes from."""
    store = catalog.store(store_url)
    row_key = layout.training_row(round_id, client_id, method)
    if store.exists(row_key):
        return store.read_json(row_key)
    if len(train) == 0:  # ECOS with exhausted="stop" kept no cluster: the pool does not cover the client
        row = {"method": method, "client_id": client_id, "accuracy": float("nan"), "epochs": 0, "steps": 0,
               "final_loss": float("nan"), "train_s": 0.0, "proxy_size": 0, "domains": [], "model_key": None}  # fmt: skip
        store.write_json(row_key, row)
        return row
    test = catalog.client_split(cfg.data, cfg.seed)[1] if cfg.train.evaluate else None
    row, state = _fit(train, test, cfg)
    row = {"method": method, "client_id": client_id, **row, "domains": train.domains.tolist(),
           "model_key": _save_model(store_url, round_id, client_id, method, state)}  # fmt: skip
    store.write_json(row_key, row)  # last: marks this model done
    return row


@task(name="train-on-proxy-set", **STORAGE_RETRIES)
def train_on_selection(store_url: str, cfg: RoundConfig, round_id: str, client_id: str, method: str, selection_key: str) -> dict:
    proxy = round_pool_images(store_url, cfg, catalog.store(store_url).read_npy(selection_key))
    # an unlabelled pool image needs an annotator first (ecos labels export / import / train)
    return train_once(store_url, cfg, round_id, client_id, method, proxy.subset(np.flatnonzero(proxy.labels >= 0)))


@task(name="train-local", **STORAGE_RETRIES)
def train_local(store_url: str, cfg: RoundConfig, round_id: str, client_id: str) -> dict:
    """Local: the same model trained on the client's own data only."""
    return train_once(store_url, cfg, round_id, client_id, "local", client_shard(cfg, client_id))


def read_training_rows(store_url: str, round_id: str, selections: list[dict], local_clients: list[str]) -> list[dict]:
    """The rows a training deployment left in the store, in the order of the round."""
    store = catalog.store(store_url)
    pairs = [(s["client_id"], s["method"]) for s in selections] + [(c, "local") for c in local_clients]
    return [store.read_json(layout.training_row(round_id, c, m)) for c, m in pairs]


@task(name="domain-local-accuracy", **STORAGE_RETRIES)
def domain_local_accuracy(store_url: str, cfg: RoundConfig) -> list[dict]:
    """Each domain trained on its own train part and tested on its test part: a domain
    far below the others is broken data or an under-trained model. Cached in the store."""
    store = catalog.store(store_url)
    parts = catalog.domains(cfg.data, cfg.seed)
    key = layout.cache("domain-local", content_key(*(p.ids for p in parts.values()), cfg.train.model_dump(mode="json"),
                                                   cfg.data.n_client_train, cfg.data.n_client_test, cfg.seed))  # fmt: skip
    if store.exists(key):
        return store.read_json(key)
    rows = []
    for name in parts:
        n_test = min(cfg.data.n_client_test, len(parts[name]) // 3)
        n_train = min(cfg.data.n_client_train, len(parts[name]) - n_test)
        train, test, _ = split_client_pool(parts, name, n_train, n_test, "ood", cfg.seed)
        row, _ = _fit(train, test, cfg)
        rows.append({"domain": name, "n_train": n_train, "n_test": n_test, **row})
    store.write_json(key, rows)
    return rows
