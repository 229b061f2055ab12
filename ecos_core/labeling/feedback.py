"""Annotator feedback in selective manual labeling: spend the budget in two steps.

Annotators may answer "none of these classes" for a selected image (an off-task pool
image). The first step selects part of the budget with the ECOS rule; the clusters where
most of the answers were "none" lose their score, and the second step spends the rest
elsewhere. It uses only the released noisy scores and the annotators' answers about pool
images: no extra ε, nothing more from the client.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ecos_core.sampling.samplers import SamplingPool, ScoredSampler


def off_task_clusters(assignments: np.ndarray, none: np.ndarray, k: int, max_none: float = 0.5) -> np.ndarray:
    """(K,) bool: clusters where more than `max_none` of the annotated picks were "none"."""
    a, n = np.asarray(assignments), np.asarray(none, dtype=bool)
    if a.shape != n.shape:
        raise ValueError(f"one answer per annotated pick: {a.shape} assignments, {n.shape} answers")
    asked = np.bincount(a, minlength=k)
    nones = np.bincount(a[n], minlength=k)
    return (asked > 0) & (nones > max_none * asked)


def select_with_feedback(sampler: ScoredSampler, pool: SamplingPool, budget: int,
                         answered_none: Callable[[np.ndarray], np.ndarray], first_share: float = 0.5,
                         max_none: float = 0.5) -> np.ndarray:  # fmt: skip
    """Rows of `pool`: `first_share` of the budget by the rule, the rest after the
    annotators' answers (`answered_none(rows)` -> bool per row) on the first part."""
    if not 0 < first_share <= 1:
        raise ValueError(f"first_share must lie in (0, 1], got {first_share}")
    first = sampler.select(pool, max(1, int(budget * first_share)))
    left = budget - len(first)
    if left <= 0 or len(first) == 0:
        return first
    off = off_task_clusters(pool.assignments[first], answered_none(first), len(pool.centroids), max_none)
    rest = np.setdiff1d(np.arange(len(pool)), first)
    if len(rest) == 0:
        return first
    sub = SamplingPool(pool.features[rest], pool.assignments[rest], pool.centroids)
    second = ScoredSampler(sampler.rule, np.where(off, 0.0, sampler.scores), sampler.name).select(sub, left)
    return np.sort(np.concatenate([first, rest[second]]))
