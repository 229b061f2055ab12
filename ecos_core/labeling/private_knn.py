"""Automated client labelling with Private-kNN (Zhu et al., CVPR 2020; GNMax as in PATE).

The cloud sends the features of the samples it selected; the client answers, per query,
only the argmax of its k-nearest-neighbour vote histogram after Gaussian noise N(0, σ²)
was added to each of the C class counts. Neighbours are found in cosine geometry
(l2-normalised rows, faiss IndexFlatIP), the same geometry as the cloud index.

Sensitivity: one query's histogram has exactly k votes (or fewer under subsampling).
Changing one local sample's label moves one vote between two bins; adding or removing
one local sample swaps at most one member of the k nearest, again moving one vote
from one bin to another. Either way at most two bins change by 1, so the L2
sensitivity is √2 under both adjacencies; we use √2 throughout. Releasing the argmax
is post-processing of the noisy histogram, so the histogram's ε bounds it (we do not
use PATE's data-dependent analysis: it would make ε itself depend on private data).

With sample_rate q < 1 each query sees a fresh Poisson subsample of the local set
(each sample kept with probability q), which dp-accounting's PoissonSampledDpEvent
amplifies. All ε come from dp-accounting's PLD accountant, never a hand formula.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import dp_accounting
import faiss
import numpy as np

from ecos_core.sampling.index import l2_normalize
from ecos_core.privacy.accounting import DEFAULT_DELTA, epsilon

SENSITIVITY = math.sqrt(2.0)  # one vote moves between two bins; see module docstring
_CHUNK = 1024  # query rows per dense similarity block under subsampling (bounds memory at chunk × M)


def _check_inputs(
    query_feats: np.ndarray, local_feats: np.ndarray, local_labels: np.ndarray, k: int, classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated float32 l2-normalised queries/local features and int64 labels."""
    q = np.asarray(query_feats)
    x = np.asarray(local_feats)
    y = np.asarray(local_labels)
    if q.ndim != 2 or x.ndim != 2:
        raise ValueError(f"query_feats and local_feats must be 2-D (N, d) and (M, d), got {q.shape} and {x.shape}")
    if q.shape[1] != x.shape[1]:
        raise ValueError(f"feature dimension mismatch: queries have d={q.shape[1]}, local features d={x.shape[1]}")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(
            f"local_labels must be 1-D with one label per local feature row ({len(x)}), got shape {y.shape}"
        )
    if classes < 2:
        raise ValueError(f"classes must be >= 2, got {classes}")
    if not 1 <= k <= len(x):
        raise ValueError(f"k must be between 1 and the number of local samples {len(x)}, got {k}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"local_labels must be integers, got dtype {y.dtype}")
    if len(y) and (y.min() < 0 or y.max() >= classes):
        raise ValueError(f"local_labels must lie in 0..{classes - 1}, got {y.min()}..{y.max()}")
    if not (np.isfinite(q).all() and np.isfinite(x).all()):
        raise ValueError("query_feats or local_feats contain NaN or inf")
    return l2_normalize(q), l2_normalize(x), y.astype(np.int64)


def _histograms(neighbours: np.ndarray, valid: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """(N, C) vote counts from (N, k) neighbour ids; `valid` masks slots without a neighbour."""
    n = len(neighbours)
    rows = np.repeat(np.arange(n), neighbours.shape[1])[valid.ravel()]
    cols = labels[neighbours.ravel()[valid.ravel()]]
    votes = np.zeros((n, classes), dtype=np.float64)
    np.add.at(votes, (rows, cols), 1.0)
    return votes


def _exact_votes(q: np.ndarray, x: np.ndarray, y: np.ndarray, k: int, classes: int) -> np.ndarray:
    index = faiss.IndexFlatIP(x.shape[1])  # inner product of unit rows = cosine similarity
    index.add(x)
    _, neighbours = index.search(q, k)
    return _histograms(neighbours, neighbours >= 0, y, classes)


def _subsampled_votes(
    q: np.ndarray, x: np.ndarray, y: np.ndarray, k: int, classes: int, sample_rate: float, rng: np.random.Generator
) -> np.ndarray:
    """Votes where each query sees its own Poisson subsample of the local set.

    A per-query mask does not fit faiss's shared index, so this is a dense, chunked
    cosine search; unsampled rows get -inf and never vote. A subsample smaller than k
    simply casts fewer votes (sensitivity is unchanged).
    """
    out = np.zeros((len(q), classes), dtype=np.float64)
    for start in range(0, len(q), _CHUNK):
        sims = q[start : start + _CHUNK] @ x.T
        keep = rng.random(sims.shape) < sample_rate
        sims = np.where(keep, sims, -np.inf)
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        valid = np.isfinite(np.take_along_axis(sims, top, axis=1))
        out[start : start + len(sims)] = _histograms(top, valid, y, classes)
    return out


def knn_votes(
    query_feats: np.ndarray, local_feats: np.ndarray, local_labels: np.ndarray, k: int, classes: int
) -> np.ndarray:
    """Exact (non-private) vote counts (N, C) of each query's k nearest local samples (cosine)."""
    q, x, y = _check_inputs(query_feats, local_feats, local_labels, k, classes)
    if len(q) == 0:
        return np.zeros((0, classes), dtype=np.float64)
    return _exact_votes(q, x, y, k, classes)


def private_knn_labels(
    query_feats: np.ndarray,
    local_feats: np.ndarray,
    local_labels: np.ndarray,
    k: int = 10,
    sigma: float = 4.0,
    classes: int = 10,
    sample_rate: float = 1.0,
    seed: int | None = None,
) -> np.ndarray:
    """Noisy-argmax (GNMax) label, int64 (N,), of each query's k-NN vote histogram.

    Account for the answer with `private_knn_event(len(query_feats), sigma, sample_rate)`.
    sigma must be > 0: a noiseless answer would release the votes without any guarantee.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 (noise std of each vote count), got {sigma}")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must lie in (0, 1], got {sample_rate}")
    q, x, y = _check_inputs(query_feats, local_feats, local_labels, k, classes)
    if len(q) == 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    if sample_rate < 1:
        votes = _subsampled_votes(q, x, y, k, classes, sample_rate, rng)
    else:
        votes = _exact_votes(q, x, y, k, classes)
    noisy = votes + rng.normal(0.0, sigma, size=votes.shape)
    return noisy.argmax(axis=1).astype(np.int64)


def private_knn_event(n_queries: int, sigma: float, sample_rate: float = 1.0) -> dp_accounting.DpEvent:
    """The DP event of answering `n_queries` Private-kNN queries (Gaussian, sensitivity √2)."""
    if n_queries < 1:
        raise ValueError(f"n_queries must be >= 1, got {n_queries}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must lie in (0, 1], got {sample_rate}")
    event: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(noise_multiplier=sigma / SENSITIVITY)
    if sample_rate < 1:
        event = dp_accounting.PoissonSampledDpEvent(sampling_probability=sample_rate, event=event)
    return event if n_queries == 1 else dp_accounting.SelfComposedDpEvent(event, n_queries)


def combined_epsilon(events: Sequence[dp_accounting.DpEvent], delta: float = DEFAULT_DELTA) -> float:
    """One ε at `delta` for all these releases composed (e.g. coverage scores + kNN labels), via PLD.

    Build the coverage-score part with ecos_core.privacy.accounting.gaussian_event(sigma_cc, releases).
    """
    events = list(events)
    if not events:
        raise ValueError("combined_epsilon needs at least one DP event")
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    return epsilon(dp_accounting.ComposedDpEvent(events), delta, accountant="pld")
