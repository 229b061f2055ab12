"""Batched, deterministic embedding of uint8 images with the frozen backbone."""

from __future__ import annotations

import sys
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ecos_core.storage.content import content_key  # noqa: F401 (re-exported)
from ecos_core.embedding.feature_space import FEATURE_DIM, Preprocessing


def _check_images(images: Any) -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        shape = getattr(images, "shape", None)
        dtype = getattr(images, "dtype", type(images).__name__)
        raise ValueError(f"images must be a uint8 array of shape (N, H, W, 3), got {dtype} with shape {shape}")
    return images


def preprocess(images_uint8_NHWC: np.ndarray, pre: Preprocessing) -> torch.Tensor:
    """uint8 (N,H,W,3) RGB -> float32 (N,3,size,size), scaled to [0,1], resized, normalised."""
    images = _check_images(images_uint8_NHWC)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    if x.shape[-2:] != (pre.size, pre.size) and len(x):
        smooth = pre.interpolation in ("bilinear", "bicubic")
        # antialias off: identical on every platform/torch build and cheaper; MNIST-size inputs are upsampled anyway.
        x = F.interpolate(
            x,
            size=(pre.size, pre.size),
            mode=pre.interpolation,
            align_corners=False if smooth else None,
            antialias=False,
        )
    mean = torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std).contiguous()


def embed(
    images: np.ndarray,
    model: torch.nn.Module,
    pre: Preprocessing,
    batch_size: int = 256,
    progress: Callable[[int, int], None] | None = None,
    show_bar: bool = True,
    desc: str = "features",
) -> np.ndarray:
    """float32 (N, feature_dim) features; progress(done, total) is called after every batch."""
    images = _check_images(images)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dim = int(getattr(model, "feature_dim", FEATURE_DIM))
    total = len(images)
    out = np.empty((total, dim), dtype=np.float32)
    if total == 0:
        return out
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    # Preprocess per batch so a large pool never materialises as one float tensor.
    with torch.inference_mode(), tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=not show_bar) as bar:
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            x = preprocess(images[start:stop], pre).to(device)
            out[start:stop] = model(x).to("cpu", torch.float32).numpy()
            bar.update(stop - start)
            if progress is not None:
                progress(stop, total)
    return out
