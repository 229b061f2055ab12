import numpy as np
import pytest

from ecos_core.sampling.coverage import add_noise, coverage_counts, noisy_coverage_scores
from ecos_core.sampling.index import build_index, l2_normalize, nearest_centroid


def blobs(n_per: int = 100, k: int = 5, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 5
    x = np.concatenate([c + rng.normal(size=(n_per, d)) for c in centres]).astype(np.float32)
    return x, np.repeat(np.arange(k), n_per)


def test_index_recovers_blobs_and_is_deterministic():
    x, truth = blobs()
    a, b = build_index(x, k=5, seed=3), build_index(x, k=5, seed=3)
    assert a.centroids.shape == (5, 16) and a.centroids.dtype == np.float32
    assert np.array_equal(a.assignments, b.assignments)
    # each true blob lands in exactly one cluster
    for blob in range(5):
        assert len(set(a.assignments[truth == blob])) == 1
    assert a.cluster_sizes().sum() == len(x)


def test_index_rejects_bad_input():
    x, _ = blobs()
    with pytest.raises(ValueError, match="k must be"):
        build_index(x, k=len(x) + 1)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        build_index(bad, k=3)
    with pytest.raises(ValueError, match="2-D"):
        build_index(x[0], k=3)


def test_coverage_counts_are_a_histogram_of_nearest_centroids():
    x, _ = blobs()
    index = build_index(x, k=5)
    counts = coverage_counts(x[:120], index.centroids)
    assert counts.sum() == 120
    assert np.array_equal(counts, np.bincount(nearest_centroid(l2_normalize(x[:120]), index.centroids), minlength=5))


def test_noise_is_seeded_and_has_the_right_scale():
    counts = np.zeros(20000)
    a, b = add_noise(counts, 6.1, seed=1), add_noise(counts, 6.1, seed=1)
    assert np.array_equal(a, b)
    assert a.std() == pytest.approx(6.1, rel=0.03)
    assert not np.array_equal(add_noise(counts, 6.1), add_noise(counts, 6.1))  # unseeded: fresh entropy


def test_nearest_centroid_shape_mismatch():
    with pytest.raises(ValueError, match="centroids"):
        nearest_centroid(np.zeros((3, 4), np.float32), np.zeros((2, 5), np.float32))


def test_noisy_scores_shape():
    x, _ = blobs()
    index = build_index(x, k=5)
    assert noisy_coverage_scores(x, index.centroids, 1.0, seed=0).shape == (5,)


def test_ball_coverage_counts_members_and_ignores_far_samples():
    x, truth = blobs()
    index = build_index(x[truth < 4], k=4)  # the fifth blob is missing from the pool
    # every pool member lies inside its own cluster's ball
    assert np.array_equal(coverage_counts(x[truth < 4], index.centroids, index.radii), index.cluster_sizes())
    far = x[truth == 4]
    assert coverage_counts(far, index.centroids).sum() == len(far)  # nearest rule: all vote somewhere
    assert coverage_counts(far, index.centroids, index.radii).sum() < 0.1 * len(far)  # ball: (almost) none
    with pytest.raises(ValueError, match="one value per centroid"):
        coverage_counts(far, index.centroids, index.radii[:2])

