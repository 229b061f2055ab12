"""k-center greedy (farthest-first traversal): a diverse subset, no near-duplicates twice."""

from __future__ import annotations

import numpy as np


def kcenter_greedy(features: np.ndarray, n: int, first: int = 0) -> np.ndarray:
    """Indices (int64) of `n` rows picked farthest-first, starting from row `first`.

    Each step adds the row farthest from everything picked so far. O(n·N·d) with one
    matrix-vector product per step, no N×N matrix in memory.
    """
    x = np.ascontiguousarray(features, dtype=np.float32)
    total = len(x)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    n = min(n, total)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if not 0 <= first < total:
        raise ValueError(f"first must index one of the {total} rows, got {first}")
    sq_norms = np.einsum("ij,ij->i", x, x)
    picked = np.empty(n, dtype=np.int64)
    min_dist = np.full(total, np.inf, dtype=np.float32)
    current = first
    for step in range(n):
        picked[step] = current
        dist = sq_norms - 2.0 * (x @ x[current]) + sq_norms[current]
        np.minimum(min_dist, dist, out=min_dist)
        min_dist[current] = -np.inf  # never pick a row twice, even with exact duplicates
        current = int(np.argmax(min_dist))
    return picked
