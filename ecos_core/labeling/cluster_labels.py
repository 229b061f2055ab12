"""Automated client labeling with one noisy label histogram over groups of the selection.

The cloud groups the samples it selected into G groups (k-means in the label space) and
sends the G group centres. The client counts, for each of its labelled samples, the pair
(nearest group, its label): a G×C histogram in which every sample adds 1 to exactly one
cell, so adding or removing one sample moves the histogram by 1 in L2. That is one
Gaussian release with sensitivity 1, whatever G, the same mechanism (and the same
accounting) as the coverage scores. The cloud labels each group by the argmax of its
noisy row when that count clears `min_sigmas`·σ; a group no client sample is near
(off-task pool images) stays below it and is left unlabelled, so it is not trained on.

Why not Private-kNN per selected sample (ecos_core.labeling.private_knn, kept for comparison):
each of its B queries is a release, so B=1000 queries need Poisson subsampling (10%) to
stay at ε≈5; a query then sees ~100 client samples and its 10 votes drown in the vote
noise. Measured on the built-in pool (seed 0, ECOS selection, pool-adapted features):
Private-kNN labels agreed with the truth 41-49% of the time, the group histogram at
σ=2 (composed ε=2.1 with the σ=6.1 scores) 76-93%.
"""

from __future__ import annotations

import dp_accounting
import numpy as np

from ecos_core.sampling.index import build_index, l2_normalize

UNLABELLED = -1  # a group the client's data does not reach: not trained on


def group_selection(features: np.ndarray, groups: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(G, d) unit group centres and each selected sample's group, by seeded k-means.
    G is capped at the number of samples (a small selection gets one group per sample)."""
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"features must be a non-empty (N, d) array, got shape {x.shape}")
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    index = build_index(l2_normalize(x), min(groups, len(x)), seed, niter=25, nredo=1)
    return index.centroids, index.assignments


def label_histogram(features: np.ndarray, labels: np.ndarray, centres: np.ndarray, classes: int) -> np.ndarray:
    """The client's exact (G, C) counts: each local sample adds 1 at (nearest centre, label)."""
    x, y, c = np.asarray(features, dtype=np.float32), np.asarray(labels), np.asarray(centres, dtype=np.float32)
    if x.ndim != 2 or c.ndim != 2 or x.shape[1] != c.shape[1]:
        raise ValueError(f"features (N, d) and centres (G, d) must share d, got {x.shape} and {c.shape}")
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be {len(x)} integers, got {y.dtype} {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= classes):
        raise ValueError(f"labels must lie in 0..{classes - 1}, got {y.min()}..{y.max()}")
    if not (np.isfinite(x).all() and np.isfinite(c).all()):
        raise ValueError("features or centres contain NaN or inf")
    hist = np.zeros((len(c), classes), dtype=np.float64)
    if len(x):
        nearest = np.argmax(l2_normalize(x) @ l2_normalize(c).T, axis=1)
        np.add.at(hist, (nearest, y), 1.0)
    return hist


def add_histogram_noise(hist: np.ndarray, sigma: float, seed: int | None = None) -> np.ndarray:
    """The release: N(0, σ²) on every cell (σ > 0: a noiseless histogram has no guarantee)."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    return np.asarray(hist, dtype=np.float64) + np.random.default_rng(seed).normal(0.0, sigma, np.shape(hist))


def group_labels(noisy: np.ndarray, sigma: float, min_sigmas: float = 3.0) -> np.ndarray:
    """(G,) label of each group from the noisy histogram (post-processing, no extra ε):
    the noisy argmax where its count reaches min_sigmas·σ, else UNLABELLED."""
    h = np.asarray(noisy, dtype=np.float64)
    if h.ndim != 2 or not np.isfinite(h).all():
        raise ValueError(f"noisy histogram must be a finite (G, C) array, got shape {h.shape}")
    best = h.argmax(axis=1)
    return np.where(h.max(axis=1) >= min_sigmas * sigma, best, UNLABELLED).astype(np.int64)


def cluster_label_event(sigma: float) -> dp_accounting.DpEvent:
    """The DP event of one noisy label histogram (Gaussian, L2 sensitivity 1)."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    return dp_accounting.GaussianDpEvent(noise_multiplier=sigma)
