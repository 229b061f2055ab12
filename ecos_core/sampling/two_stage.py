"""Two-stage probing: a coarse probe over groups of clusters, then a fine probe only inside
the groups the coarse one kept.

Why: a 100-sample client spreads over 11-19 of K=100 clusters with 7-14 samples each, and at
ε ≤ 1 one release at σ per cluster hides most of them. Spending part of the privacy budget on
group sums first (m clusters a group: noise σ1 instead of the σ√m of a post-hoc sum) finds
the client's region; the fine release then only covers that region, so the noise-only bins
elsewhere never compete for the budget.

Privacy: two Gaussian releases of histograms with L2 sensitivity 1 (each sample adds 1 to one
group, and to at most one cluster), composed by the accountant (`two_stage_event` with
ecos_core.privacy.accounting.epsilon). `split_sigma` picks σ1 = σ/√ρ and σ2 = σ/√(1-ρ); for Gaussians
that pair has exactly the ε of one release at σ (1/σ1² + 1/σ2² = 1/σ²), and the accountant
confirms it (tests/test_two_stage.py).

The groups are the hierarchy's Ward groups of the K clusters (ecos_core.sampling.hierarchy), so the
levels nest and the client needs only the K centroids and a group id per cluster.
"""

from __future__ import annotations

import dp_accounting
import numpy as np

from ecos_core.sampling.hierarchy import group_sums
from ecos_core.privacy.accounting import gaussian_event


def split_sigma(sigma: float, coarse_share: float) -> tuple[float, float]:
    """(σ1, σ2) spending the share `coarse_share` of one release's 1/σ² on the coarse probe."""
    if not sigma > 0 or not 0 < coarse_share < 1:
        raise ValueError(f"need sigma > 0 and 0 < coarse_share < 1, got {sigma}, {coarse_share}")
    return sigma / float(np.sqrt(coarse_share)), sigma / float(np.sqrt(1.0 - coarse_share))


def two_stage_event(sigma1: float, sigma2: float) -> dp_accounting.DpEvent:
    """Both releases of one client, for the accountant."""
    return dp_accounting.ComposedDpEvent([gaussian_event(sigma1), gaussian_event(sigma2)])


def coarse_kept(coarse: np.ndarray, sigma1: float, group_sigmas: float) -> np.ndarray:
    """Groups the fine probe covers: noisy group count > 0 and ≥ group_sigmas·σ1 (an empty
    group passes at 2σ1 with probability 0.023)."""
    coarse = np.asarray(coarse, dtype=np.float64)
    return (coarse > 0) & (coarse >= group_sigmas * sigma1)


def simulate_two_stage(counts: np.ndarray, groups: np.ndarray, sigma1: float, sigma2: float,
                       group_sigmas: float, seed: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """What a client with exact `counts` would release: (noisy group counts, noisy cluster
    counts with NaN for the clusters outside the kept groups, which are never released).
    Seeded: one generator draws the coarse noise, then the fine."""
    counts = np.asarray(counts, dtype=np.float64)
    groups = np.asarray(groups, dtype=np.int64)
    if counts.shape != groups.shape:
        raise ValueError(f"counts {counts.shape} and groups {groups.shape} must have one value per cluster")
    rng = np.random.default_rng(seed)
    coarse = group_sums(counts, groups) + rng.normal(0.0, sigma1, size=int(groups.max()) + 1)
    released = coarse_kept(coarse, sigma1, group_sigmas)[groups]
    fine = np.full(len(counts), np.nan)
    fine[released] = counts[released] + rng.normal(0.0, sigma2, size=int(released.sum()))
    return coarse, fine


def two_stage_weights(coarse: np.ndarray, fine: np.ndarray, groups: np.ndarray,
                      sigma1: float, sigma2: float) -> np.ndarray:  # fmt: skip
    """Per-cluster budget weights (≥ 0) from both releases; 0 outside the released groups.

    A released group's total is the inverse-variance mean of its coarse count (variance σ1²)
    and the sum of its fine counts (m·σ2²). It is spread over its members by their fine
    counts shrunk towards the group's mean (Efron-Morris, B = σ2² / max(σ2², spread), as in
    ecos_core.sampling.hierarchy), so a thinly covered member keeps a share instead of losing it to a
    noise-level cut."""
    fine = np.asarray(fine, dtype=np.float64)
    groups = np.asarray(groups, dtype=np.int64)
    weights = np.zeros(len(fine))
    released = ~np.isnan(fine)
    for g in np.unique(groups[released]):
        members = released & (groups == g)
        y = fine[members]
        v1, v2 = sigma1**2, len(y) * sigma2**2
        total = max((coarse[g] / v1 + y.sum() / v2) / (1.0 / v1 + 1.0 / v2), 0.0)
        spread = float(((y - y.mean()) ** 2).mean())
        shrink = min(1.0, sigma2**2 / spread) if spread > 0 else 1.0
        est = np.clip(y.mean() + (1.0 - shrink) * (y - y.mean()), 0.0, None)
        weights[members] = est / est.sum() * total if est.sum() > 0 else total / len(y)
    return weights


def two_stage_budgets(counts: np.ndarray, centroids: np.ndarray, sizes: np.ndarray, budget: int, sigma: float,
                      coarse_share: float, group_size: float, group_sigmas: float,
                      seed: int) -> tuple[np.ndarray, dp_accounting.DpEvent]:  # fmt: skip
    """One simulated two-stage round at the one-stage ε of `sigma`: each cluster's share of
    `budget` (never above its size) and the DP event of both releases. The coarse groups are
    the Ward groups of about `group_size` clusters (ecos_core.sampling.hierarchy)."""
    from ecos_core.sampling.hierarchy import group_levels, n_groups_for
    from ecos_core.sampling.samplers import allocate_budget

    sigma1, sigma2 = split_sigma(sigma, coarse_share)
    groups = group_levels(centroids, sizes, [n_groups_for(len(counts), group_size)])[0]
    coarse, fine = simulate_two_stage(counts, groups, sigma1, sigma2, group_sigmas, seed)
    weights = two_stage_weights(coarse, fine, groups, sigma1, sigma2)
    return allocate_budget(weights, sizes, budget), two_stage_event(sigma1, sigma2)
