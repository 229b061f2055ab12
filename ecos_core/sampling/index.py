"""Cloud index: compress the pool's features into K centroids with faiss KMeans."""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """Unit-length rows: cosine geometry, so clustering ignores feature magnitude.

    Cloud and client both apply it; the probe names it (feature_norm="l2").
    """
    x = np.ascontiguousarray(features, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D (N, d), got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


@dataclass(frozen=True)
class PoolIndex:
    """K centroids of the pool and each pool sample's cluster id."""

    centroids: np.ndarray  # float32 (K, d)
    assignments: np.ndarray  # int64 (N,)
    radii: np.ndarray | None = None  # float32 (K,): each cluster's ball, see coverage_radii

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    def cluster_sizes(self) -> np.ndarray:
        return np.bincount(self.assignments, minlength=self.k)


def nearest_centroid(features: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index (int64) of the nearest centroid of every row (exact L2 search)."""
    return nearest_with_distance(features, centroids)[0]


def nearest_with_distance(features: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nearest centroid int64, its L2 distance float32) of every row (exact search)."""
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    x = np.ascontiguousarray(features, dtype=np.float32)
    if x.ndim != 2 or centroids.ndim != 2 or x.shape[1] != centroids.shape[1]:
        raise ValueError(f"features {x.shape} and centroids {centroids.shape} must be (N, d) and (K, d)")
    if len(x) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    search = faiss.IndexFlatL2(centroids.shape[1])
    search.add(centroids)
    squared, nearest = search.search(x, 1)
    return nearest[:, 0].astype(np.int64), np.sqrt(np.maximum(squared[:, 0], 0)).astype(np.float32)


def radii_of(nearest: np.ndarray, distance: np.ndarray, k: int) -> np.ndarray:
    """Each cluster's ball from its members' distances: the farthest member (0 if empty).

    A centroid covers a client sample only inside this ball. Without it every client
    sample counts for its nearest centroid however far away, so a client whose domain is
    missing from the pool still votes, for whatever the pool has nearest (measured: 75% of
    MNIST-M's votes fell on animal/letter clusters when MNIST-M was not in the pool).
    Shard by shard, the running maximum of these gives the same radii."""
    radii = np.zeros(k, dtype=np.float32)
    np.maximum.at(radii, nearest, distance)
    return radii


def coverage_radii(features: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """radii_of the pool's nearest-centroid distances (features l2-normalised here)."""
    return radii_of(*nearest_with_distance(l2_normalize(features), centroids), len(centroids))


def train_centroids(x: np.ndarray, k: int, seed: int = 0, niter: int = 25, nredo: int = 3) -> np.ndarray:
    """faiss KMeans centroids of l2-normalised rows `x`, using every row given.

    nredo restarts keep the lowest-inertia run: faiss seeds centroids uniformly at random,
    and a single run can merge two modes while splitting another. A large pool passes a
    seeded sample (see sample_rows): faiss itself would subsample to 256 points per centroid.
    """
    if not 1 <= k <= len(x):
        raise ValueError(f"k must be between 1 and the number of points {len(x)}, got {k}")
    if not np.isfinite(x).all():
        raise ValueError("pool features contain NaN or inf")
    # min_points_per_centroid=1: no "please provide more points" warning (small k-means are fine here)
    kmeans = faiss.Kmeans(x.shape[1], k, niter=niter, nredo=nredo, seed=seed, max_points_per_centroid=len(x),
                          min_points_per_centroid=1, verbose=False)  # fmt: skip
    kmeans.train(np.ascontiguousarray(x, dtype=np.float32))
    return kmeans.centroids.astype(np.float32)


def sample_rows(sizes: list[int], n: int, seed: int = 0) -> list[np.ndarray]:
    """A seeded uniform sample of n of the pool's rows, as sorted row indices per shard
    (all rows when n covers the pool), so the sample is read one shard at a time."""
    total = int(sum(sizes))
    picked = np.arange(total) if n >= total else np.sort(np.random.default_rng(seed).choice(total, n, replace=False))
    bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return [picked[(picked >= a) & (picked < b)] - a for a, b in zip(bounds[:-1], bounds[1:])]


def build_index(features: np.ndarray, k: int = 100, seed: int = 0, niter: int = 25, nredo: int = 3) -> PoolIndex:
    """faiss KMeans on l2-normalised features, every point used (an in-memory pool)."""
    x = l2_normalize(features)
    centroids = train_centroids(x, k, seed, niter, nredo)
    nearest, distance = nearest_with_distance(x, centroids)
    return PoolIndex(centroids, nearest, radii_of(nearest, distance, k))
