"""Plain containers shared by every ecos_core module (arrays in, arrays out)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageSet:
    """A labelled set of images from one or more domains.

    images:  uint8 (N, H, W, 3), RGB, H == W (28 for the built-in digits pool)
    labels:  int64 (N,), class ids (digits 0-9 for the built-in digit domains)
    domains: unicode (N,), the domain tag of each sample ("mnist", "mnistm", ...)
    ids:     unicode (N,), unique, stable sample ids ("mnist/000123")
    """

    images: np.ndarray
    labels: np.ndarray
    domains: np.ndarray
    ids: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {self.images.dtype} {self.images.shape}")
        for name in ("labels", "domains", "ids"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows, images has {n}")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: np.ndarray) -> "ImageSet":
        index = np.asarray(index)
        return ImageSet(self.images[index], self.labels[index], self.domains[index], self.ids[index])

    @staticmethod
    def concat(parts: list["ImageSet"]) -> "ImageSet":
        return ImageSet(
            np.concatenate([p.images for p in parts]),
            np.concatenate([p.labels for p in parts]).astype(np.int64),
            np.concatenate([p.domains.astype(str) for p in parts]),
            np.concatenate([p.ids.astype(str) for p in parts]),
        )
