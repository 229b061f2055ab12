"""Two-stage probing (ecos_core.sampling.two_stage): the ε split, the simulated releases, the weights."""

import numpy as np
import pytest

from ecos_core.privacy.accounting import epsilon, gaussian_epsilon
from ecos_core.sampling.two_stage import (coarse_kept, simulate_two_stage, split_sigma, two_stage_budgets, two_stage_event,
                                 two_stage_weights)

GROUPS = np.repeat(np.arange(4), 5)  # 20 clusters in 4 groups of 5


@pytest.mark.parametrize("share", [0.3, 0.5, 0.7])
def test_split_keeps_the_one_stage_epsilon(share: float) -> None:
    s1, s2 = split_sigma(3.9, share)
    assert s1 > 3.9 and s2 > 3.9
    assert epsilon(two_stage_event(s1, s2), 1e-5) == pytest.approx(gaussian_epsilon(3.9, 1e-5), rel=1e-4)


def test_split_rejects_bad_shares() -> None:
    for share in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError):
            split_sigma(3.9, share)


def test_coarse_kept_needs_a_positive_count_over_the_threshold() -> None:
    assert coarse_kept(np.array([10.0, 3.0, -20.0]), 4.0, 2.0).tolist() == [True, False, False]
    assert coarse_kept(np.array([0.0]), 4.0, 0.0).tolist() == [False]


def test_simulation_releases_only_the_kept_groups_and_is_seeded() -> None:
    counts = np.zeros(20)
    counts[:5] = 30  # the client lives in group 0
    coarse, fine = simulate_two_stage(counts, GROUPS, 5.0, 5.0, 2.0, seed=3)
    assert coarse.shape == (4,) and coarse[0] > 100
    assert not np.isnan(fine[:5]).any()
    kept = coarse_kept(coarse, 5.0, 2.0)
    assert (np.isnan(fine) == ~kept[GROUPS]).all()
    again = simulate_two_stage(counts, GROUPS, 5.0, 5.0, 2.0, seed=3)
    np.testing.assert_array_equal(coarse, again[0])
    np.testing.assert_array_equal(fine, again[1])


def test_simulation_checks_shapes() -> None:
    with pytest.raises(ValueError):
        simulate_two_stage(np.zeros(3), GROUPS, 1.0, 1.0, 2.0, seed=0)


def test_weights_follow_the_group_total_and_keep_thin_members() -> None:
    fine = np.full(20, np.nan)
    fine[:5] = [20.0, 12.0, 3.0, 1.0, 14.0]
    coarse = np.array([50.0, 0.0, 0.0, 0.0])
    w = two_stage_weights(coarse, fine, GROUPS, 5.0, 5.0)
    assert (w[5:] == 0).all()  # never released: no weight
    assert (w[:5] > 0).all()  # shrinkage keeps a share for the thin members
    v1, v2 = 25.0, 5 * 25.0
    total = (50 / v1 + 50 / v2) / (1 / v1 + 1 / v2)
    assert w.sum() == pytest.approx(total)
    assert w[0] > w[1] > w[2]


def test_weights_of_a_flat_group_are_even() -> None:
    fine = np.full(20, np.nan)
    fine[5:10] = 4.0
    w = two_stage_weights(np.array([0.0, 20.0, 0.0, 0.0]), fine, GROUPS, 2.0, 2.0)
    np.testing.assert_allclose(w[5:10], w[5])
    assert w[5] > 0


def test_budgets_spend_inside_the_clients_region() -> None:
    rng = np.random.default_rng(0)
    centroids = np.concatenate([c + rng.normal(size=(5, 8)) * 0.1 for c in rng.normal(size=(4, 8)) * 10])
    sizes = np.full(20, 100)
    counts = np.zeros(20)
    counts[5:10] = [9, 8, 7, 6, 10]
    share, event = two_stage_budgets(counts, centroids, sizes, 200, 3.9, 0.5, 5.0, 2.0, seed=1)
    assert share.sum() == 200 and share[5:10].sum() == 200
    assert epsilon(event, 1e-5) == pytest.approx(gaussian_epsilon(3.9, 1e-5), rel=1e-4)
