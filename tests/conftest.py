"""Test settings: no network, no GPU, no server; Prefect runs in ephemeral mode in a
temporary home so tests never touch a user's Prefect database."""

from __future__ import annotations

import os
import tempfile

_home = tempfile.mkdtemp(prefix="ecos-test-prefect-")
os.environ.setdefault("PREFECT_HOME", _home)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.pop("PREFECT_API_URL", None)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from ecos_core.types import ImageSet  # noqa: E402


def make_imageset(n: int, seed: int = 0, domain: str = "toy") -> ImageSet:
    """Bars whose position encodes the label: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 40, (n, 28, 28, 3)).astype(np.uint8)
    for i, y in enumerate(labels):
        images[i, 2 * y + 2 : 2 * y + 6, 4:24] = 255
    return ImageSet(images, labels.astype(np.int64), np.full(n, domain), np.array([f"{domain}/{i:06d}" for i in range(n)]))


@pytest.fixture
def toy_set() -> ImageSet:
    return make_imageset(200)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny batches gain nothing from threads, and spinning OpenMP workers can be ~100x slower
    when other processes compete for the same cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
