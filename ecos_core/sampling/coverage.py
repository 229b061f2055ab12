"""Client side: centroid-coverage (CC) scores and their Gaussian noise.

A sample adds exactly 1 to the bin of its nearest centroid, so the histogram's L2
sensitivity is 1 and N(0, σ²) noise per bin gives the Gaussian mechanism that
ecos_core.privacy.accounting accounts for.
"""

from __future__ import annotations

import numpy as np

from ecos_core.sampling.index import l2_normalize, nearest_with_distance


def coverage_counts(features: np.ndarray, centroids: np.ndarray, radii: np.ndarray | None = None) -> np.ndarray:
    """Exact (noise-free) number of local samples whose nearest centroid is each centroid.

    With `radii` (the probe's cluster balls) a sample counts only inside its nearest
    centroid's ball; one outside every ball counts nowhere. Either way a sample adds 1 to
    at most one bin, so the sensitivity stays 1."""
    nearest, distance = nearest_with_distance(l2_normalize(features), centroids)
    if radii is not None:
        radii = np.asarray(radii, dtype=np.float32)
        if radii.shape != (len(centroids),):
            raise ValueError(f"radii must have one value per centroid ({len(centroids)}), got shape {radii.shape}")
        nearest = nearest[distance <= radii[nearest]]
    return np.bincount(nearest, minlength=len(centroids)).astype(np.float64)


def add_noise(counts: np.ndarray, sigma: float, seed: int | None = None) -> np.ndarray:
    """counts + N(0, σ²) per bin.

    seed=None draws fresh OS entropy: on a real device the cloud must not be able to
    replay the noise. Benchmarks pass a seed so runs are reproducible.
    """
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    rng = np.random.default_rng(seed)
    return counts + rng.normal(0.0, sigma, size=counts.shape)


def noisy_coverage_scores(
    features: np.ndarray, centroids: np.ndarray, sigma: float, seed: int | None = None,
    radii: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """The K scalars a client sends: its coverage counts plus Gaussian noise."""
    return add_noise(coverage_counts(features, centroids, radii), sigma, seed)
