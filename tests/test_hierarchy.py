"""The cluster hierarchy (ecos_core.sampling.hierarchy) and the ECOS rule read through it."""

import numpy as np
import pytest

from ecos_core.sampling.hierarchy import group_labels, group_levels, group_sums, grouped_estimate, kept_groups, n_groups_for
from ecos_core.sampling.index import build_index, l2_normalize
from ecos_core.sampling.samplers import ECOSSampler, SamplingPool

K = 40


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    """K centroids in 4 well-separated families of 10 (family f = clusters 10f..10f+9)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 10
    centroids = np.concatenate([c + rng.normal(size=(10, 16)) for c in centres]).astype(np.float32)
    sizes = rng.integers(50, 300, size=K)
    return centroids, sizes


@pytest.fixture(scope="module")
def pool() -> SamplingPool:
    """A pool of 40 clusters in 4 families, each cluster 60 samples (families are neighbours)."""
    rng = np.random.default_rng(1)
    families = rng.normal(size=(4, 32)) * 6
    centres = np.concatenate([f + rng.normal(size=(10, 32)) * 2 for f in families])
    x = l2_normalize(np.concatenate([c + rng.normal(size=(60, 32)) * 0.3 for c in centres]))
    index = build_index(x, k=K, seed=0)
    return SamplingPool(x, index.assignments, index.centroids)


def test_ward_groups_are_the_families_numbered_by_lowest_cluster(blobs):
    centroids, sizes = blobs
    groups = group_labels(centroids, sizes, 4)
    assert groups.tolist() == [f for f in range(4) for _ in range(10)]
    assert np.array_equal(group_labels(centroids, sizes, 4), groups)  # deterministic, no seed needed
    assert len(set(group_labels(centroids, sizes, 7).tolist())) == 7
    assert group_labels(centroids, sizes, K).tolist() == list(range(K))  # K groups: every cluster alone
    assert set(group_labels(centroids, sizes, 1).tolist()) == {0}


def test_levels_nest_and_a_coarser_level_finds_what_the_finer_misses(blobs):
    centroids, sizes = blobs
    fine, coarse = group_levels(centroids, sizes, [8, 4])
    assert np.array_equal(coarse, group_labels(centroids, sizes, 4)) and len(set(fine.tolist())) == 8
    assert all(len(set(coarse[fine == g].tolist())) == 1 for g in range(8))  # each fine group inside one coarse
    counts = np.zeros(K)
    counts[20:30] = 4.0  # 40 samples over family 2: each half alone is too weak at σ=4
    noisy = counts + np.random.default_rng(6).normal(0, 4.0, size=K)
    assert not kept_groups(noisy, fine, 4.0, 2.0)[np.unique(fine[20:30])].all()
    est = grouped_estimate(noisy, [fine, coarse], 4.0, 2.0)
    assert (est[20:30] > 0).all() and (est[:20] == 0).all() and (est[30:] == 0).all()


def test_group_count_and_bad_arguments(blobs):
    centroids, sizes = blobs
    assert n_groups_for(100, 10) == 10 and n_groups_for(8, 10) == 1 and n_groups_for(100, 0.5) == 100
    with pytest.raises(ValueError, match="n_groups"):
        group_labels(centroids, sizes, 0)
    with pytest.raises(ValueError, match="sizes"):
        group_labels(centroids, sizes[:-1], 3)
    with pytest.raises(ValueError, match="group_size"):
        n_groups_for(100, 0)


def test_group_sums_equal_the_member_sums():
    rng = np.random.default_rng(2)
    groups = rng.integers(0, 7, size=100)
    scores = rng.normal(size=100) * 5
    sums = group_sums(scores, groups)
    assert sums.shape == (7,)
    assert np.allclose(sums, [scores[groups == g].sum() for g in range(7)])
    assert np.isclose(sums.sum(), scores.sum())


def test_a_group_of_weak_counts_is_found_where_no_member_passes_3_sigma(blobs):
    centroids, sizes = blobs
    groups = group_labels(centroids, sizes, 4)
    counts = np.zeros(K)
    counts[10:20] = [6, 5, 4, 6, 5, 3, 0, 4, 5, 6]  # 44 samples over family 1, every bin < 3σ = 12
    noisy = counts + np.random.default_rng(3).normal(0, 4.0, size=K)
    assert not ECOSSampler(sigma=4.0).keep_mask(noisy)[10:20].any()  # no bin passes 3σ alone
    assert kept_groups(noisy, groups, 4.0, 2.0).tolist() == [False, True, False, False]
    est = grouped_estimate(noisy, [groups], 4.0, 2.0)
    assert (est[:10] == 0).all() and (est[20:] == 0).all() and (est[10:20] >= 0).all()
    assert est[10:20].sum() >= 0.8 * noisy[10:20].sum()  # the group's mass is kept (clipping only adds)
    share = ECOSSampler(sigma=4.0, group_sizes=(10,), floor_sigmas=3.0).cluster_budgets(noisy, sizes, 500, centroids)
    flat = ECOSSampler(sigma=4.0, floor_sigmas=3.0, group_sizes=()).cluster_budgets(noisy, sizes, 500)
    assert flat[10:20].sum() == 0  # without the hierarchy the client's family is invisible
    assert share.sum() == 500 and share[10:20].sum() >= 400  # (one noise bin elsewhere passes 3σ here)
    assert (share[10:20] > 0).all()  # spread over the family, not whole clusters in score order


def test_no_signal_keeps_groups_only_at_the_noise_rate(blobs):
    """Pure noise: a group passes 2σ√m with probability Φ(-2) = 0.023; nothing more."""
    centroids, sizes = blobs
    groups = group_labels(centroids, sizes, 4)
    rng = np.random.default_rng(4)
    kept = [kept_groups(rng.normal(0, 4.0, size=K), groups, 4.0, 2.0).sum() for _ in range(2000)]
    assert np.mean(kept) <= 4 * 0.023 * 1.5
    zero = np.zeros(K)
    assert (grouped_estimate(zero, [groups], 4.0, 2.0) == 0).all()  # no score at all: nothing kept
    rule = ECOSSampler(sigma=4.0, group_sizes=(10,), floor_sigmas=3.0)
    assert rule.cluster_budgets(zero, sizes, 500, centroids).sum() == 0


@pytest.mark.parametrize("seed", range(20))
def test_budget_never_exceeded_and_never_above_a_cluster(blobs, seed):
    centroids, _ = blobs
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 40, size=K)
    counts = np.where(rng.random(K) < 0.4, rng.integers(0, 30, size=K), 0).astype(float)
    sigma = float(rng.choice([0.5, 4.0, 20.0]))
    budget = int(rng.integers(0, 2 * sizes.sum()))
    for exhausted in ("stop", "fill"):
        rule = ECOSSampler(sigma=sigma, group_sizes=((3,), (10,), (5, 10))[seed % 3], exhausted=exhausted)
        share = rule.cluster_budgets(counts + rng.normal(0, sigma, K), sizes, budget, centroids)
        assert share.sum() <= budget and (share >= 0).all() and (share <= sizes).all()


@pytest.mark.parametrize("seed", range(10))
def test_sigma_zero_is_the_oracle_rule(blobs, seed):
    """Exact counts: the hierarchy changes nothing (the Oracle stays the Oracle)."""
    centroids, sizes = blobs
    rng = np.random.default_rng(seed)
    counts = np.where(rng.random(K) < 0.3, rng.integers(1, 200, size=K), 0).astype(float)
    budget = int(rng.integers(1, 3000))
    flat = ECOSSampler(sigma=0.0, group_sizes=()).cluster_budgets(counts, sizes, budget)
    assert np.array_equal(ECOSSampler(sigma=0.0, group_sizes=(5, 10)).cluster_budgets(counts, sizes, budget, centroids), flat)
    assert np.array_equal(grouped_estimate(counts, group_levels(centroids, sizes, [8, 4]), 0.0, 2.0), counts)


def test_selection_is_deterministic_and_needs_the_centroids(pool):
    counts = np.zeros(K)
    counts[pool.assignments[:120]] += 1  # a client covering a few neighbouring clusters
    noisy = counts + np.random.default_rng(5).normal(0, 4.0, size=K)
    rule = ECOSSampler(sigma=4.0, seed=3, group_sizes=(5, 10))
    a, b = rule.select_with_scores(pool, 150, noisy), rule.select_with_scores(pool, 150, noisy)
    assert np.array_equal(a, b) and len(a) == 150 == len(set(a.tolist()))
    with pytest.raises(ValueError, match="centroids"):
        rule.cluster_budgets(noisy, np.bincount(pool.assignments, minlength=K), 300)
