"""Sampling from an ingested pool: reads the membership table, then the features of only
the images a sampler must look at (ECOS: the clusters given a share; K-Center: a seeded
sample), never the whole pool's."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from ecos_core.storage import layout
from ecos_core.config import RoundConfig
from ecos_core.sampling.class_share import class_cluster_budgets, pick_by_class
from ecos_core.sampling.samplers import ECOSSampler, KCenterSampler, RandomSampler, SamplingPool
from tasks import catalog
from tasks.pool_index import features_at, read_members


# features of at most this many pool images at once (≈ 100 MB at d=1280); a cluster larger
# than this (only in pools of millions) is k-centred over a seeded sample of this size
MAX_ROWS_IN_MEMORY = 20_000


def eligible_members(store_url: str, index_key: str, cfg: RoundConfig) -> pd.DataFrame:
    """The round's pool: the indexed pool less the client's own samples and, in the "ood"
    regime, less the client's domain."""
    members = read_members(store_url, index_key)
    train, test = catalog.client_split(cfg.data, cfg.seed)
    out = members["id"].isin(np.concatenate([train.ids, test.ids]))
    if cfg.data.regime == "ood":
        out |= members["domain"] == cfg.data.client_domain
    return members[~out].reset_index(drop=True)


def select_from_pool(store_url: str, index_key: str, cfg: RoundConfig, method: str, scores: np.ndarray | None) -> np.ndarray:
    """The ids one sampler picks; `scores` are ECOS's noisy scores or the Oracle's counts."""
    members, budget, s = eligible_members(store_url, index_key, cfg), cfg.sampling.budget, cfg.sampling
    if method == "full":
        return members["id"].to_numpy(str)
    if method == "random":
        return members["id"].to_numpy(str)[RandomSampler(cfg.seed).select_n(len(members), budget)]
    centroids = catalog.store(store_url).read_npy(layout.index_part(index_key, "centroids.npy"))
    if method == "kcenter":
        candidates = members.iloc[RandomSampler(cfg.seed).select_n(len(members), s.kcenter_sample)].reset_index(drop=True)
        view = SamplingPool(features_at(store_url, index_key, centroids.shape[1], candidates), candidates["cluster"].to_numpy(np.int64), centroids)
        return candidates["id"].to_numpy(str)[KCenterSampler(cfg.seed).select(view, budget)]
    rule = ECOSSampler(sigma=cfg.sigma if method == "ecos" else 0.0, seed=cfg.seed, **s.rule_params())
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(centroids),) or not np.isfinite(scores).all():
        raise ValueError(f"scores must be {len(centroids)} finite numbers, got shape {scores.shape}")
    sizes = np.bincount(members["cluster"], minlength=len(centroids))
    share = rule.cluster_budgets(scores, sizes, budget, centroids)  # the hierarchy groups the index's centroids
    if s.class_balance and "class" in members:  # the combined space's index holds the cloud's class guesses
        per_class = class_cluster_budgets(share, scores, members["cluster"].to_numpy(), members["class"].to_numpy(),
                                          cfg.train.num_classes, budget)  # fmt: skip

        def pick(view: SamplingPool, needed: pd.DataFrame, batch: np.ndarray) -> np.ndarray:
            wanted = np.zeros_like(per_class)
            wanted[batch] = per_class[batch]
            return pick_by_class(view, needed["class"].to_numpy(np.int64), wanted)

        def cap(needed: pd.DataFrame) -> pd.DataFrame:
            """One capped cluster, sampled class by class: each class keeps at least its budget."""
            cluster, part, kept = int(needed["cluster"].iloc[0]), MAX_ROWS_IN_MEMORY / len(needed), []
            for label, group in needed.groupby("class", sort=True):
                wanted_here = int(per_class[cluster, label]) if label < per_class.shape[1] else 0  # "none": 0
                take = min(len(group), max(wanted_here, int(len(group) * part)))
                kept.append(group.iloc[RandomSampler(cfg.seed).select_n(len(group), take)])
            return pd.concat(kept).sort_index()

        picked = _in_batches(store_url, index_key, members, centroids, per_class.sum(axis=1), cfg.seed, pick, cap)
    else:
        def pick(view: SamplingPool, needed: pd.DataFrame, batch: np.ndarray) -> np.ndarray:
            return rule.pick(view, np.where(np.isin(np.arange(len(share)), batch), share, 0))

        picked = _in_batches(store_url, index_key, members, centroids, share, cfg.seed, pick)
    return members["id"].to_numpy(str)[picked]


Pick = Callable[[SamplingPool, pd.DataFrame, np.ndarray], np.ndarray]


def _in_batches(store_url: str, index_key: str, members: pd.DataFrame, centroids: np.ndarray, wanted: np.ndarray,
                seed: int, pick: Pick, cap: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> np.ndarray:  # fmt: skip
    """Sorted positions in `members` that `pick` chooses (rows of a view), reading the features
    of the clusters `wanted` gives images to, a bounded batch of clusters at a time. A cluster
    larger than the cap is sampled down: by `cap`, else a seeded sample of at least its budget."""
    sizes = np.bincount(members["cluster"], minlength=len(centroids))
    picked = []
    for batch in cluster_batches(np.flatnonzero(wanted), sizes, MAX_ROWS_IN_MEMORY):
        needed = members[members["cluster"].isin(batch)]  # index: positions in `members`
        if len(needed) > MAX_ROWS_IN_MEMORY and cap is not None:  # one cluster alone, larger than the cap
            needed = cap(needed)
        elif len(needed) > MAX_ROWS_IN_MEMORY:
            needed = needed.iloc[RandomSampler(seed).select_n(len(needed), max(MAX_ROWS_IN_MEMORY, int(wanted[batch].sum())))]
        view = SamplingPool(features_at(store_url, index_key, centroids.shape[1], needed), needed["cluster"].to_numpy(np.int64), centroids)
        picked.append(needed.index.to_numpy()[pick(view, needed, batch)])
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def cluster_batches(clusters: np.ndarray, sizes: np.ndarray, max_rows: int) -> list[np.ndarray]:
    """Consecutive groups of clusters holding at most max_rows members together (a larger
    cluster goes alone): k-center picks inside one cluster, so the groups are independent
    and memory stays bounded however many clusters the client covers."""
    batches: list[list[int]] = []
    rows = max_rows
    for c in clusters:
        if rows + sizes[c] > max_rows:
            batches.append([])
            rows = 0
        batches[-1].append(int(c))
        rows += int(sizes[c])
    return [np.asarray(b) for b in batches]
