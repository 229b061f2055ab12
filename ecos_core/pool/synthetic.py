"""Deterministic synthetic pools of any size, for the scale benchmark: built-in images
augmented by shifts, colour changes and blending with another image, so that a million
images are a million different inputs to the backbone and the KMeans.

A row's image is a pure function of (seed, index): the ingest decodes "augment:<seed>/<i>"
on whichever worker gets it, with nothing on disk but the built-in domains' cache.
"""

from __future__ import annotations

import functools

import numpy as np

from ecos_core.data.builtin import load_domain

BASE_DOMAINS = ("mnist", "mnistm", "synth", "optdigits", "animal", "letters")  # digits and distractors


@functools.lru_cache(maxsize=len(BASE_DOMAINS))
def _base(name: str):  # noqa: ANN202 - ImageSet, cached per process
    return load_domain(name)


def _pick(seed: int, index: int) -> tuple[np.random.Generator, str, int]:
    rng = np.random.default_rng([seed, index])
    name = BASE_DOMAINS[index % len(BASE_DOMAINS)]
    return rng, name, int(rng.integers(len(_base(name))))


def augmented(seed: int, index: int) -> tuple[np.ndarray, int, str]:
    """(uint8 28×28×3 image, label, domain) of synthetic row `index`."""
    rng, name, base = _pick(seed, index)
    image = _base(name).images[base].astype(np.float32)
    other = _base(name).images[int(rng.integers(len(_base(name))))].astype(np.float32)
    image = np.roll(image, tuple(rng.integers(-3, 4, 2)), axis=(0, 1))  # shift
    image = image * rng.uniform(0.6, 1.2, 3) + rng.uniform(-30, 30, 3)  # colour
    image = (1 - (alpha := rng.uniform(0.0, 0.25))) * image + alpha * other  # blend
    return np.clip(image, 0, 255).astype(np.uint8), int(_base(name).labels[base]), name


def augmented_labels(seed: int, n: int) -> tuple[list[int], list[str]]:
    """Labels and domains of rows 0..n-1, without building their images."""
    labels, domains = [], []
    for i in range(n):
        _, name, base = _pick(seed, i)
        labels.append(int(_base(name).labels[base]))
        domains.append(name)
    return labels, domains
