"""The pool-adapted feature space and client labeling by one noisy label histogram."""

from __future__ import annotations

import io

import numpy as np
import pytest

from ecos_core.embedding.adapted_space import AdaptedSpace, annotator_labels, combined, train_adapted_space
from ecos_core.benchmark.grid import GridSpec
from ecos_core.labeling.cluster_labels import (
    UNLABELLED,
    add_histogram_noise,
    cluster_label_event,
    group_labels,
    group_selection,
    label_histogram,
)
from ecos_core.sampling.index import l2_normalize
from ecos_core.privacy.accounting import epsilon, gaussian_epsilon
from ecos_core.types import ImageSet

rng = np.random.default_rng(0)


def _blobs(n_per: int, classes: int, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    r = np.random.default_rng(seed)
    centres = r.normal(size=(classes, dim)) * 5
    y = np.repeat(np.arange(classes), n_per)
    return (centres[y] + r.normal(size=(len(y), dim))).astype(np.float32), y


def test_every_local_sample_adds_one_to_exactly_one_cell():
    x, y = _blobs(30, 4)
    centres, _ = group_selection(x, 6, seed=0)
    hist = label_histogram(x, y, centres, classes=4)
    assert hist.sum() == len(x) and hist.shape == (6, 4)
    for i in rng.choice(len(x), 10, replace=False):  # neighbouring datasets: one sample removed
        without = label_histogram(np.delete(x, i, 0), np.delete(y, i), centres, classes=4)
        diff = hist - without
        assert np.count_nonzero(diff) == 1 and diff.sum() == 1  # L2 sensitivity 1, whatever G


def test_group_labels_recover_clean_groups_and_leave_unreached_groups_unlabelled():
    x, y = _blobs(50, 3)
    far = x[:40] + 100.0  # selected pool images no client sample is near
    query = np.vstack([x, far])
    centres, groups = group_selection(query, 8, seed=1)
    noisy = add_histogram_noise(label_histogram(x, y, centres, 3), sigma=1.0, seed=0)
    labels = group_labels(noisy, sigma=1.0, min_sigmas=3.0)[groups]
    assert (labels[: len(x)] == y).mean() > 0.95
    assert (labels[len(x):] == UNLABELLED).all()


def test_label_histogram_epsilon_is_the_gaussian_mechanisms():
    assert epsilon(cluster_label_event(2.0)) == pytest.approx(gaussian_epsilon(2.0, 1e-5))


@pytest.mark.parametrize(("call", "words"), [
    (lambda: label_histogram(np.zeros((3, 4)), np.array([0, 1, 5]), np.ones((2, 4)), 3), "labels must lie in 0..2"),
    (lambda: label_histogram(np.zeros((3, 4)), np.array([0, 1, 2]), np.ones((2, 5)), 3), "must share d"),
    (lambda: label_histogram(np.full((3, 4), np.nan), np.array([0, 1, 2]), np.ones((2, 4)), 3), "NaN"),
    (lambda: add_histogram_noise(np.zeros((2, 3)), 0.0), "sigma must be > 0"),
    (lambda: group_labels(np.full((2, 3), np.inf), 1.0), "finite"),
    (lambda: group_selection(np.zeros((0, 4)), 3), "non-empty"),
])  # fmt: skip
def test_bad_input_is_refused(call, words):
    with pytest.raises(ValueError, match=words):
        call()


def test_combined_cosine_is_the_mean_of_both_cosines():
    a, b = rng.normal(size=(5, 7)), rng.normal(size=(5, 3))
    c = combined(a, b)
    assert np.allclose(np.linalg.norm(c, axis=1), 1, atol=1e-6)
    ca, cb = l2_normalize(a.astype(np.float32)), l2_normalize(b.astype(np.float32))
    assert np.allclose(c @ c.T, (ca @ ca.T + cb @ cb.T) / 2, atol=1e-5)


def test_annotators_answer_none_off_task():
    y = annotator_labels(np.array([3, 4, 5]), np.array(["mnist", "letters", "animal"]), ("letters", "animal"), 10)
    assert y.tolist() == [3, 10, 10]


@pytest.fixture(scope="module")
def space() -> AdaptedSpace:
    from ecos_core.training.train import TrainConfig

    images = rng.integers(0, 255, size=(64, 28, 28, 3), dtype=np.uint8)
    labels = np.arange(64) % 11
    data = ImageSet(images, labels, np.array(["d"] * 64), np.arange(64).astype(str))
    return train_adapted_space(data, classes=10, seed=0, train=TrainConfig(max_epochs=1, max_steps=2, batch_size=32))


def test_adapted_space_travels_as_bytes_and_embeds_the_same(space):
    images = rng.integers(0, 255, size=(5, 28, 28, 3), dtype=np.uint8)
    data = space.to_bytes()
    again = AdaptedSpace.from_bytes(data, space.sha256)
    emb = space.embed(images)
    assert emb.shape == (5, 128) and np.isfinite(emb).all()
    assert np.array_equal(again.embed(images), emb)  # cloud and device embed bit for bit alike
    assert len(data) < 500_000  # "a few hundred KB at most"


def test_adapted_space_refuses_other_bytes(space):
    data = bytearray(space.to_bytes())
    data[-100] ^= 1
    with pytest.raises(ValueError, match="sha256 mismatch"):
        AdaptedSpace.from_bytes(bytes(data), space.sha256)
    buf = io.BytesIO()
    np.savez(buf, width=np.int64(16), classes=np.int64(11), **{"w:x": np.array([object()], dtype=object)})
    with pytest.raises(ValueError, match="allow_pickle"):  # an object array would need unpickling
        AdaptedSpace.from_bytes(buf.getvalue()).weights["x"]


def test_new_bench_options_leave_the_stored_cells_of_older_grids_valid():
    legacy = GridSpec(feature_space="backbone", client_labeler="knn").setting()
    assert not {"feature_space", "client_labeler", "label_sigma", "adapted_size"} & set(legacy)
    assert {"feature_space", "client_labeler"} <= set(GridSpec().setting())


def test_feedback_moves_the_second_half_away_from_off_task_clusters():
    from ecos_core.labeling.feedback import off_task_clusters, select_with_feedback
    from ecos_core.sampling.samplers import ECOSSampler, SamplingPool, ScoredSampler

    r = np.random.default_rng(3)
    assignments = np.repeat(np.arange(4), 50)  # clusters 0, 1 off task; 2, 3 on task
    feats = l2_normalize(r.normal(size=(200, 6)).astype(np.float32))
    pool = SamplingPool(feats, assignments, l2_normalize(r.normal(size=(4, 6)).astype(np.float32)))
    off = assignments < 2
    sampler = ScoredSampler(ECOSSampler(sigma=1.0), np.array([40.0, 30.0, 20.0, 10.0]))
    picked = select_with_feedback(sampler, pool, 60, lambda rows: off[rows])
    assert len(picked) == 60 and len(np.unique(picked)) == 60  # the budget, no image twice
    plain = sampler.select(pool, 60)
    assert off[picked].sum() < off[plain].sum()  # fewer "none" images than without feedback
    assert off[picked].sum() <= 30  # the second half went to on-task clusters only
    assert np.array_equal(picked, select_with_feedback(sampler, pool, 60, lambda rows: off[rows]))  # seeded
    assert off_task_clusters(np.array([0, 0, 1]), np.array([True, False, True]), 3).tolist() == [False, True, False]
    with pytest.raises(ValueError, match="one answer per annotated pick"):
        off_task_clusters(np.array([0, 1]), np.array([True]), 2)
