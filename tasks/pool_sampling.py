"""Sampling from an ingested pool: reads the membership table, then the features of only
the images a sampler must look at (ECOS: the clusters given a share; K-Center: a seeded
sample), never the whole pool's."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ecos_core import layout
from ecos_core.backbone import BackboneSpec
from ecos_core.config import RoundConfig
from ecos_core.samplers import ECOSSampler, KCenterSampler, RandomSampler, SamplingPool
from tasks import catalog
from tasks.pool_index import features_at, read_members


def eligible_members(store_url: str, index_key: str, cfg: RoundConfig) -> pd.DataFrame:
    """The round's pool: the indexed pool less the client's own samples and, in the "ood"
    regime, less the client's domain."""
    members = read_members(store_url, index_key)
    train, test = catalog.client_split(cfg.data, cfg.seed)
    out = members["id"].isin(np.concatenate([train.ids, test.ids]))
    if cfg.data.regime == "ood":
        out |= members["domain"] == cfg.data.client_domain
    return members[~out].reset_index(drop=True)


def select_from_pool(store_url: str, index_key: str, spec: BackboneSpec, cfg: RoundConfig, method: str,
                     scores: np.ndarray | None) -> np.ndarray:  # fmt: skip
    """The ids one sampler picks; `scores` are ECOS's noisy scores or the Oracle's counts."""
    members, budget, s = eligible_members(store_url, index_key, cfg), cfg.sampling.budget, cfg.sampling
    if method == "full":
        return members["id"].to_numpy(str)
    if method == "random":
        return members["id"].to_numpy(str)[RandomSampler(cfg.seed).select_n(len(members), budget)]
    centroids = catalog.store(store_url).read_npy(layout.index_part(index_key, "centroids.npy"))
    if method == "kcenter":
        candidates = members.iloc[RandomSampler(cfg.seed).select_n(len(members), s.kcenter_sample)].reset_index(drop=True)
        view = SamplingPool(features_at(store_url, spec, candidates), candidates["cluster"].to_numpy(np.int64), centroids)
        return candidates["id"].to_numpy(str)[KCenterSampler(cfg.seed).select(view, budget)]
    rule = ECOSSampler(sigma=cfg.sigma if method == "ecos" else 0.0, seed=cfg.seed, threshold_sigmas=s.threshold_sigmas,
                       threshold_share=s.threshold_share, exhausted=s.exhausted, floor_sigmas=s.floor_sigmas)  # fmt: skip
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(centroids),) or not np.isfinite(scores).all():
        raise ValueError(f"scores must be {len(centroids)} finite numbers, got shape {scores.shape}")
    share = rule.cluster_budgets(scores, np.bincount(members["cluster"], minlength=len(centroids)), budget)
    needed = members[members["cluster"].isin(np.flatnonzero(share))].reset_index(drop=True)
    view = SamplingPool(features_at(store_url, spec, needed), needed["cluster"].to_numpy(np.int64), centroids)
    return needed["id"].to_numpy(str)[rule.pick(view, share)]
