import numpy as np
import pytest

from ecos_core.training.train import TrainConfig, accuracy, train_classifier
from tests.conftest import make_imageset

# the toy encodes the label by bar position, so no shift augmentation here
FAST = TrainConfig(max_epochs=8, max_steps=60, batch_size=32, max_shift=0.0)


def test_training_learns_and_is_deterministic():
    train, test = make_imageset(300, seed=0), make_imageset(200, seed=1)
    a, b = train_classifier(train, FAST, seed=0), train_classifier(train, FAST, seed=0)
    assert accuracy(a.model, test) > 0.8
    assert a.final_loss == pytest.approx(b.final_loss)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert np.array_equal(pa.detach().numpy(), pb.detach().numpy())
    assert a.steps == 60 and a.epochs == 7  # max_steps stops it inside epoch 7


def test_training_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        train_classifier(make_imageset(0), FAST)
    bad = make_imageset(10)
    bad.labels[0] = 12
    with pytest.raises(ValueError, match="labels"):
        train_classifier(bad, FAST)
