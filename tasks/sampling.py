"""Pick one client's proxy set with one sampler and store the selected pool indices."""

from __future__ import annotations

import time

import numpy as np
from prefect import task

from ecos_core.storage import layout
from ecos_core.config import RoundConfig
from ecos_core.sampling.class_share import select_by_class
from ecos_core.sampling.samplers import SamplingPool, make_sampler
from tasks import catalog
from tasks.common import STORAGE_RETRIES, run_logger
from tasks.features import features_of
from tasks.pool_sampling import select_from_pool
from tasks.index import has_class_guesses, load_classes, load_index
from ecos_core.sampling.index import l2_normalize


@task(name="save-round-config", **STORAGE_RETRIES)
def save_round_config(store_url: str, round_id: str, cfg: RoundConfig) -> str:
    """The config the selections were made under: what `ecos labels` reads to rebuild them."""
    key = layout.round_key(round_id, "config.json")
    catalog.store(store_url).write_json(key, cfg.model_dump(mode="json"))
    return key


@task(name="select-proxy-set", **STORAGE_RETRIES)
def select_proxy_set(
    store_url: str, cfg: RoundConfig, feature_keys: dict[str, str], index_key: str, round_id: str, client_id: str,
    method: str, noisy_scores: list[float] | None = None, exact_counts: list[float] | None = None,
) -> dict:  # fmt: skip
    start = time.perf_counter()
    by_class = _by_class(store_url, cfg, index_key, method)
    if cfg.data.pool:
        ids = select_from_pool(store_url, index_key, cfg, method, noisy_scores if method == "ecos" else exact_counts)
        return _save(store_url, round_id, client_id, method, ids, time.perf_counter() - start, cfg.sampling.budget,
                     by_class)  # fmt: skip
    pool = catalog.split(cfg.data, cfg.seed)[2]
    index = load_index(store_url, index_key)
    view = SamplingPool(l2_normalize(features_of(store_url, feature_keys, cfg.data, cfg.seed, pool.ids)),
                        index.assignments, index.centroids)  # fmt: skip
    s = cfg.sampling
    sampler = make_sampler(
        method, seed=cfg.seed, sigma=cfg.sigma,
        noisy_scores=None if noisy_scores is None else np.asarray(noisy_scores),
        exact_counts=None if exact_counts is None else np.asarray(exact_counts),
        **(s.rule_params() if method in ("ecos", "oracle") else {}),
    )  # fmt: skip
    start = time.perf_counter()
    if by_class:  # spent class by class (the combined space's index holds the cloud's class guesses)
        picked = select_by_class(sampler, view, s.budget, load_classes(store_url, index_key), cfg.train.num_classes)  # type: ignore[arg-type]
    else:
        picked = sampler.select(view, s.budget)
    return _save(store_url, round_id, client_id, method, pool.ids[picked], time.perf_counter() - start, s.budget, by_class)


def _by_class(store_url: str, cfg: RoundConfig, index_key: str, method: str) -> bool:
    """Whether this selection spends by class: the option, a rule-based sampler, and an index
    with class guesses (one published before they existed is sampled with the plain rule)."""
    if not (cfg.sampling.class_balance and method in ("ecos", "oracle") and cfg.index.feature_space == "combined"):
        return False
    if has_class_guesses(store_url, index_key):
        return True
    run_logger().warning("index %s holds no class guesses (built before they existed): %s samples with the "
                             "plain rule", index_key, method)  # fmt: skip
    return False


def _save(store_url: str, round_id: str, client_id: str, method: str, ids: np.ndarray, seconds: float, budget: int,
          by_class: bool = False) -> dict:  # fmt: skip
    key = layout.selection(round_id, client_id, method)
    catalog.store(store_url).write_npy(key, ids)
    return {"method": method, "key": key, "size": len(ids), "seconds": seconds, "unspent": max(0, budget - len(ids)),
            "by_class": by_class}  # fmt: skip
