import dp_accounting
import numpy as np
import pytest
import torch

from ecos_core.training.distill import DistillConfig, distill, model_size, train_teacher
from ecos_core.privacy.accounting import gaussian_event
from ecos_core.labeling.private_knn import combined_epsilon, knn_votes, private_knn_event, private_knn_labels
from ecos_core.training.train import SmallCNN, TrainConfig, accuracy
from tests.conftest import make_imageset


def _clusters(n: int, seed: int, d: int = 16, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated class clusters on the sphere: kNN labels them almost perfectly."""
    centres = np.random.default_rng(123).normal(size=(classes, d))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    return (centres[y] + 0.3 * rng.normal(size=(n, d))).astype(np.float32), y.astype(np.int64)


# ---- Part 1: Private-kNN labelling ----


def test_knn_votes_exact_on_toy():
    local = np.array([[1, 0], [0.9, 0.1], [0.8, 0.3], [0, 1], [0.1, 0.9]], dtype=np.float32)
    labels = np.array([0, 0, 1, 2, 2])
    queries = np.array([[1, 0.05], [0.05, 1], [5, 0]], dtype=np.float32)  # scale must not matter (cosine)
    votes = knn_votes(queries, local, labels, k=3, classes=3)
    assert votes.shape == (3, 3)
    np.testing.assert_array_equal(votes, [[2, 1, 0], [0, 1, 2], [2, 1, 0]])
    assert knn_votes(np.zeros((0, 2), np.float32), local, labels, 2, 3).shape == (0, 3)


def test_labels_accurate_with_small_sigma_and_degrade_with_large():
    local, y_local = _clusters(500, seed=0)
    queries, y_true = _clusters(300, seed=1)
    small = private_knn_labels(queries, local, y_local, k=10, sigma=0.5, seed=0)
    large = private_knn_labels(queries, local, y_local, k=10, sigma=50.0, seed=0)
    assert small.dtype == np.int64 and small.shape == (300,)
    acc_small, acc_large = (small == y_true).mean(), (large == y_true).mean()
    assert acc_small > 0.95
    assert acc_large < 0.4  # noise swamps 10 votes: close to chance (0.1)
    sub = private_knn_labels(queries, local, y_local, k=10, sigma=0.5, sample_rate=0.3, seed=0)
    assert (sub == y_true).mean() > 0.9  # a 30 % subsample still has plenty of neighbours


def test_labels_deterministic_with_seed():
    local, y_local = _clusters(200, seed=0)
    queries, _ = _clusters(100, seed=1)
    for q in (1.0, 0.5):
        a = private_knn_labels(queries, local, y_local, k=5, sigma=3.0, sample_rate=q, seed=7)
        b = private_knn_labels(queries, local, y_local, k=5, sigma=3.0, sample_rate=q, seed=7)
        c = private_knn_labels(queries, local, y_local, k=5, sigma=3.0, sample_rate=q, seed=8)
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)


def test_epsilon_grows_with_queries_and_less_noise():
    eps = lambda n, s, q=1.0: combined_epsilon([private_knn_event(n, s, q)], 1e-5)
    assert eps(10, 8.0) < eps(40, 8.0)
    assert eps(20, 16.0) < eps(20, 8.0)
    assert eps(20, 8.0, 0.1) < eps(20, 8.0)  # subsampling amplifies privacy
    # sensitivity √2: one query at sigma is the plain Gaussian at noise multiplier sigma/√2
    assert isinstance(private_knn_event(1, 8.0), dp_accounting.GaussianDpEvent)
    assert private_knn_event(1, 8.0).noise_multiplier == pytest.approx(8.0 / np.sqrt(2))


def test_combined_epsilon_exceeds_each_part():
    knn, cover = private_knn_event(30, 10.0, 0.2), gaussian_event(8.0, releases=2)
    total = combined_epsilon([knn, cover], 1e-5)
    assert total > combined_epsilon([knn], 1e-5)
    assert total > combined_epsilon([cover], 1e-5)
    with pytest.raises(ValueError, match="at least one"):
        combined_epsilon([], 1e-5)


def test_private_knn_rejects_bad_input():
    local, y = _clusters(20, seed=0)
    q, _ = _clusters(5, seed=1)
    with pytest.raises(ValueError, match="dimension mismatch"):
        knn_votes(q[:, :8], local, y, 3, 10)
    with pytest.raises(ValueError, match="one label per"):
        knn_votes(q, local, y[:-1], 3, 10)
    with pytest.raises(ValueError, match="k must be"):
        private_knn_labels(q, local, y, k=21, sigma=1.0)
    bad = q.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        private_knn_labels(bad, local, y, k=3, sigma=1.0)
    with pytest.raises(ValueError, match="labels must lie"):
        knn_votes(q, local, y + 10, 3, 10)
    with pytest.raises(ValueError, match="sigma"):
        private_knn_labels(q, local, y, k=3, sigma=0.0)
    with pytest.raises(ValueError, match="sample_rate"):
        private_knn_labels(q, local, y, k=3, sigma=1.0, sample_rate=0.0)
    with pytest.raises(ValueError, match="n_queries"):
        private_knn_event(0, 1.0)


# ---- Part 2: distillation ----


# the toy encodes the label by bar position, so no shift augmentation here
TEACHER_CFG = TrainConfig(max_epochs=8, max_steps=60, batch_size=32, max_shift=0.0, width=64)
STUDENT_CFG = DistillConfig(
    student_width=8, train=TrainConfig(max_epochs=10, max_steps=60, batch_size=32, max_shift=0.0)
)


@pytest.fixture(scope="module")
def teacher():
    return train_teacher(make_imageset(300, seed=0), TEACHER_CFG, seed=0).model


def test_model_size_counts_float32_params():
    assert model_size(torch.nn.Linear(3, 2)) == {"params": 8, "bytes": 32}  # 6 weights + 2 biases
    assert model_size(SmallCNN(10, 64))["params"] > model_size(SmallCNN(10, 16))["params"] > 0


def test_distilled_student_learns_from_unlabelled_images(teacher):
    test = make_imageset(200, seed=1)
    assert accuracy(teacher, test) > 0.8
    before = [p.detach().clone() for p in teacher.parameters()]
    unlabelled = make_imageset(300, seed=2).images  # the proxy set: images only
    a = distill(teacher, unlabelled, STUDENT_CFG, seed=0)
    assert accuracy(a.student, test) > 0.7  # chance is 0.1
    assert a.student_size["params"] < a.teacher_size["params"] / 4
    assert a.student_size == model_size(a.student)  # the student ships without the teacher inside
    assert a.steps == 60 and np.isfinite(a.final_loss)
    # the caller's teacher is untouched (frozen copy used)
    assert all(np.array_equal(p0.numpy(), p1.detach().numpy()) for p0, p1 in zip(before, teacher.parameters()))
    assert all(p.requires_grad for p in teacher.parameters())


def test_distill_deterministic(teacher):
    images = make_imageset(64, seed=3).images
    cfg = DistillConfig(student_width=8, train=TrainConfig(max_epochs=2, max_steps=4, batch_size=32, max_shift=0.1))
    a, b = distill(teacher, images, cfg, seed=5), distill(teacher, images, cfg, seed=5)
    assert a.final_loss == pytest.approx(b.final_loss)
    for pa, pb in zip(a.student.parameters(), b.student.parameters()):
        assert np.array_equal(pa.detach().numpy(), pb.detach().numpy())


def test_distill_rejects_bad_input(teacher):
    with pytest.raises(ValueError, match="empty"):
        distill(teacher, make_imageset(0).images, STUDENT_CFG)
    with pytest.raises(ValueError, match="uint8"):
        distill(teacher, make_imageset(4).images.astype(np.float32), STUDENT_CFG)
    with pytest.raises(ValueError, match="classes"):
        distill(teacher, make_imageset(4).images, DistillConfig(train=TrainConfig(num_classes=5)))
    with pytest.raises(ValueError):
        DistillConfig(temperature=0.0)
