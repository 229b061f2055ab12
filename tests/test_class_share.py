"""The class-balanced share (ecos_core.sampling.class_share): kNN class guesses, per-class budgets, picks."""

from __future__ import annotations

import numpy as np
import pytest

from ecos_core.benchmark.grid import GridSpec, grid_key
from ecos_core.sampling.class_share import (
    annotated_pool_classes,
    class_cluster_budgets,
    knn_classes,
    pick_by_class,
    select_by_class,
)
from ecos_core.sampling.samplers import ECOSSampler, SamplingPool, ScoredSampler
from ecos_core.types import ImageSet


def _blobs(per: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated classes in 3-d, `per` rows each."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([np.eye(3)[c] * 5 + rng.normal(0, 0.1, (per, 3)) for c in range(3)]).astype(np.float32)
    return x, np.repeat(np.arange(3), per)


def test_knn_classes_votes_the_nearest_labelled_rows():
    x, y = _blobs()
    assert (knn_classes(x, x[::2], y[::2], k=3) == y).all()
    with pytest.raises(ValueError, match="one label per reference row"):
        knn_classes(x, x[:3], y[:2])


def test_each_class_gets_an_equal_share_kept_clusters_first():
    # cluster 0 (kept) holds only class 0; cluster 1 (not kept, higher score) and 2 hold class 1
    assignments = np.array([0] * 10 + [1] * 10 + [2] * 10)
    predicted = np.array([0] * 10 + [1] * 10 + [1] * 5 + [2] * 5)  # class 2 = "none"
    out = class_cluster_budgets(np.array([12, 0, 0]), np.array([50.0, 3.0, 1.0]), assignments, predicted, 2, 12)
    assert out.tolist() == [[6, 0], [0, 6], [0, 0]]
    # more budget than class 1 holds in cluster 1: the next cluster by score; class 0 takes what is left
    out = class_cluster_budgets(np.array([40, 0, 0]), np.array([50.0, 3.0, 1.0]), assignments, predicted, 2, 40)
    assert out.tolist() == [[10, 0], [0, 10], [0, 5]]  # every on-task image once; "none" never
    # never more than the rule spends: it kept 8 of 12, or nothing ("stop": the rest stays unspent)
    assert class_cluster_budgets(np.array([8, 0, 0]), np.array([50.0, 3.0, 1.0]), assignments, predicted, 2, 12).sum() == 8
    assert class_cluster_budgets(np.zeros(3), np.array([0.1, 0.2, 0.3]), assignments, predicted, 2, 12).sum() == 0


def test_pick_by_class_takes_distinct_rows_of_the_asked_cluster_and_class():
    x, y = _blobs()
    pool = SamplingPool(x, np.zeros(len(x), dtype=np.int64), x[:1])
    rows = pick_by_class(pool, y, np.array([[3, 0, 2]]))
    assert len(set(rows)) == 5 and (y[rows] == 0).sum() == 3 and (y[rows] == 2).sum() == 2


def test_select_by_class_spends_the_budget_on_every_class():
    x, y = _blobs(per=30)
    assignments = np.repeat(np.arange(3), 30)
    pool = SamplingPool(x, assignments, np.eye(3, dtype=np.float32))
    sampler = ScoredSampler(ECOSSampler(sigma=0.0, group_sizes=()), np.array([30.0, 0.0, 0.0]))
    rows = select_by_class(sampler, pool, 30, y, classes=3)
    assert len(rows) == 30 and np.bincount(y[rows], minlength=3).tolist() == [10, 10, 10]


def test_annotated_pool_classes_reads_none_for_off_task_domains():
    x, y = _blobs(per=20)
    domains = np.array(["digits"] * 40 + ["letters"] * 20)
    pool = ImageSet(np.zeros((60, 2, 2, 3), np.uint8), y, domains, np.array([f"i{i}" for i in range(60)]))
    pred = annotated_pool_classes(pool, x, 30, ("letters",), classes=2, seed=0, k=3)
    assert (pred == np.where(domains == "letters", 2, y)).all()


def test_class_balance_is_the_default_and_old_cells_keep_their_key():
    """On by default; off, it stays out of the key (the cells stored before it existed are
    found); in the backbone's space it changes nothing, so it never enters that key."""
    assert GridSpec().class_balance and GridSpec().setting()["class_balance"] is True
    assert "class_balance" not in GridSpec(class_balance=False).setting()
    assert grid_key(GridSpec(class_balance=False)) != grid_key(GridSpec())
    backbone = GridSpec(feature_space="backbone")
    assert "class_balance" not in backbone.setting()
    assert grid_key(backbone) == grid_key(GridSpec(feature_space="backbone", class_balance=False))


def test_bench_cells_with_class_balance_run_for_ecos_and_the_oracle():
    """The grid wiring: the setup carries the class guesses and ECOS/Oracle cells spend by class."""
    from ecos_core.benchmark.run import BenchContext, Cell, run_cell

    sizes = {"mnistm": 150, "mnist": 150, "animal": 150}
    spec = GridSpec(client_domains=("mnist",), regimes=("ood",), domain_sizes=sizes,
                    n_client_train=40, n_client_test=40, k=4, budgets=(30,), samplers=("ecos", "oracle"), seeds=(0,),
                    sigmas=(6.1,), adapted_size=100, class_balance=True,
                    train={"max_epochs": 1, "max_steps": 5, "batch_size": 32})  # fmt: skip
    ctx = BenchContext(spec)
    setup = ctx.setup("mnist", "ood", 0)
    assert setup.predicted is not None and len(setup.predicted) == len(setup.pool)
    for sampler in ("ecos", "oracle"):
        row = run_cell(Cell(client_domain="mnist", regime="ood", budget=30, sampler=sampler, application="labeling",
                            seed=0, sigma=6.1 if sampler == "ecos" else None), ctx)  # fmt: skip
        assert 0 < row["proxy_size"] <= 30
