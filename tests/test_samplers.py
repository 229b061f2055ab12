import numpy as np
import pytest

from ecos_core.sampling.index import build_index, l2_normalize
from ecos_core.sampling.kcenter import kcenter_greedy
from ecos_core.sampling.samplers import ECOSSampler, SamplingPool, allocate_budget, make_sampler


@pytest.fixture(scope="module")
def pool() -> SamplingPool:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 32)) * 4
    x = l2_normalize(np.concatenate([c + rng.normal(size=(150, 32)) for c in centres]))
    index = build_index(x, k=8, seed=0)
    return SamplingPool(x, index.assignments, index.centroids)


def scores_for(pool: SamplingPool, clusters: list[int], n: float = 200.0) -> np.ndarray:
    s = np.zeros(len(pool.centroids))
    s[clusters] = n
    return s


@pytest.mark.parametrize("name", ["ecos", "oracle", "random", "kcenter"])
@pytest.mark.parametrize("budget", [0, 1, 37, 300])
def test_budget_is_spent_exactly_and_selection_is_deterministic(pool, name, budget):
    s = scores_for(pool, [1, 2])
    make = lambda: make_sampler(name, seed=5, sigma=6.1, noisy_scores=s, exact_counts=s)  # noqa: E731
    a, b = make().select(pool, budget), make().select(pool, budget)
    assert len(a) == budget and len(set(a.tolist())) == budget
    assert np.array_equal(a, b)
    assert a.min(initial=0) >= 0 and a.max(initial=0) < len(pool)


def test_seed_changes_random_selection(pool):
    a = make_sampler("random", seed=1).select(pool, 50)
    b = make_sampler("random", seed=2).select(pool, 50)
    assert not np.array_equal(a, b)


def test_ecos_samples_only_the_clusters_the_client_covers(pool):
    s = scores_for(pool, [3, 5])
    picked = make_sampler("ecos", sigma=6.1, noisy_scores=s).select(pool, 200)
    assert set(pool.assignments[picked]) == {3, 5}
    assert np.bincount(pool.assignments[picked])[[3, 5]].tolist() == [100, 100]  # equal scores, equal shares


def test_ecos_threshold_drops_noise_only_clusters(pool):
    rule = ECOSSampler(sigma=6.1)
    s = np.array([200.0, 15.0, -4.0, 0, 0, 0, 0, 100.0])  # 15 < 3σ: could be noise alone
    assert rule.keep_mask(s).tolist() == [True, False, False, False, False, False, False, True]


def test_ecos_fill_versus_stop_when_covered_clusters_run_out(pool):
    s = scores_for(pool, [0])
    size = int((pool.assignments == 0).sum())
    fill = ECOSSampler(sigma=1.0, exhausted="fill").select_with_scores(pool, size + 50, s)
    stop = ECOSSampler(sigma=1.0, exhausted="stop").select_with_scores(pool, size + 50, s)
    assert len(fill) == size + 50
    assert len(stop) == size  # the rest is left unspent rather than spent off-domain


def test_ecos_stop_goes_past_kept_clusters_only_down_to_the_floor(pool):
    # cluster 0 is kept (≥ 3σ); cluster 1 (2σ) is likely client data, cluster 2 (0.5σ) noise-level
    s = np.array([200.0, 2.0, 0.5, 0, 0, 0, 0, 0])
    sizes = np.bincount(pool.assignments, minlength=8)
    budget = int(sizes[:3].sum())
    # the per-cluster rule (no hierarchy; tests/test_hierarchy.py covers the grouped one)
    stop = ECOSSampler(sigma=1.0, exhausted="stop", floor_sigmas=1.0, group_sizes=()).select_with_scores(pool, budget, s)
    assert set(pool.assignments[stop]) == {0, 1} and len(stop) == sizes[0] + sizes[1]
    strict = ECOSSampler(sigma=1.0, exhausted="stop", floor_sigmas=3.0, group_sizes=()).select_with_scores(pool, budget, s)
    assert set(pool.assignments[strict]) == {0}
    oracle = ECOSSampler(sigma=0.0, exhausted="stop").select_with_scores(pool, budget, s)  # floor 0: any positive count
    assert set(pool.assignments[oracle]) == {0, 1, 2} and len(oracle) == budget


def test_ecos_rejects_bad_scores(pool):
    with pytest.raises(ValueError, match="scores"):
        ECOSSampler(sigma=1).select_with_scores(pool, 10, np.ones(3))
    with pytest.raises(ValueError, match="finite"):
        ECOSSampler(sigma=1).select_with_scores(pool, 10, np.full(8, np.nan))


def test_full_pool_and_unknown_sampler(pool):
    assert len(make_sampler("full").select(pool, 10)) == len(pool)
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("magic")
    with pytest.raises(ValueError, match="noisy coverage"):
        make_sampler("ecos")
    with pytest.raises(ValueError, match="budget"):
        make_sampler("random").select(pool, -1)


def test_allocate_budget_respects_capacity_and_sums_exactly():
    share = allocate_budget(np.array([5.0, 3.0, 0.0, 2.0]), np.array([2, 100, 100, 100]), 10)
    assert share.tolist() == [2, 5, 0, 3]
    assert allocate_budget(np.ones(3), np.full(3, 100), 10).sum() == 10
    assert allocate_budget(np.ones(2), np.array([3, 4]), 50).tolist() == [3, 4]


def test_kcenter_greedy_is_diverse_and_never_repeats():
    x = np.concatenate([np.zeros((50, 2)), np.ones((50, 2)) * 10, [[5, 5]]]).astype(np.float32)
    picked = kcenter_greedy(x, 3, first=0)
    assert len(set(picked.tolist())) == 3
    assert {tuple(x[i]) for i in picked} == {(0, 0), (10, 10), (5, 5)}
    assert len(kcenter_greedy(x, 500)) == len(x)  # duplicates never picked twice
