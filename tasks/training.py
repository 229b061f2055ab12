"""Train and evaluate the client's model on a proxy set (labels: the pool's ground truth,
standing in for the annotators of selective manual labeling)."""

from __future__ import annotations

import io

import torch
from prefect import task

from ecos_core import layout
from ecos_core.config import RoundConfig
from ecos_core.data.split import split_client_pool
from ecos_core.features import content_key
from ecos_core.train import accuracy, train_classifier
from ecos_core.types import ImageSet
from tasks import catalog
from tasks.common import STORAGE_RETRIES
from tasks.simulation import client_shard


def _fit(train: ImageSet, test: ImageSet, cfg: RoundConfig) -> tuple[dict, dict]:
    result = train_classifier(train, cfg.train, cfg.seed)
    row = {"accuracy": accuracy(result.model, test), "epochs": result.epochs, "steps": result.steps,
           "final_loss": result.final_loss, "train_s": result.seconds, "proxy_size": len(train)}  # fmt: skip
    return row, result.model.net.state_dict()


def _save_model(store_url: str, round_id: str, client_id: str, method: str, state: dict) -> str:
    buf = io.BytesIO()
    torch.save(state, buf)  # a plain tensor dict: loadable with torch.load(weights_only=True)
    key = layout.round_key(round_id, f"models/{client_id}/{method}.pt")
    catalog.store(store_url).write_bytes(key, buf.getvalue())
    return key


@task(name="train-on-proxy-set", **STORAGE_RETRIES)
def train_on_selection(store_url: str, cfg: RoundConfig, round_id: str, client_id: str, method: str, selection_key: str) -> dict:
    _, test, pool = catalog.split(cfg.data, cfg.seed)
    ids = catalog.store(store_url).read_npy(selection_key)
    proxy = pool.subset(catalog.rows_of(ids, pool.ids))
    row, state = _fit(proxy, test, cfg)
    row["model_key"] = _save_model(store_url, round_id, client_id, method, state)
    return {"method": method, "client_id": client_id, **row, "domains": proxy.domains.tolist()}


@task(name="train-local", **STORAGE_RETRIES)
def train_local(store_url: str, cfg: RoundConfig, round_id: str, client_id: str) -> dict:
    """Local: the same model trained on the client's own data only."""
    train, test = client_shard(cfg, client_id), catalog.split(cfg.data, cfg.seed)[1]
    row, state = _fit(train, test, cfg)
    row["model_key"] = _save_model(store_url, round_id, client_id, "local", state)
    return {"method": "local", "client_id": client_id, **row, "domains": train.domains.tolist()}


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
