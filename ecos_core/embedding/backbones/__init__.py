"""The feature extractors a feature space can be built on, behind one interface.

    load_backbone(spec, weights_path=None, device="cpu") -> (frozen module, spec)
    resolve_spec(name, preprocessing, model_url=None, model_sha256=None, feature_dim=None) -> spec

Every module maps normalised (N, 3, H, W) floats to (N, feature_dim) features and carries
`feature_dim`; a spec names the network, its exact weights (sha256), the preprocessing and
the dimension, and `load_backbone` refuses to hand out a network that does not match it.

    mobilenet_v2        ImageNet MobileNetV2 (default), packaged weights
    efficientnet_lite0  ImageNet EfficientNet-Lite0, packaged weights
    onnx                the user's own ONNX file at a URL, pinned by sha256 (onnxruntime)

This module is light (no torch until a network is loaded): configs and the CLI import it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecos_core.embedding.feature_space import (
    BACKBONES,
    DEFAULT_BACKBONE,
    PACKAGED,
    USER_MODEL,
    BackboneSpec,
    Preprocessing,
    unknown_backbone,
)

if TYPE_CHECKING:
    from torch import nn

MODULES = {"mobilenet_v2": "mobilenet_v2", "efficientnet_lite0": "efficientnet_lite0", USER_MODEL: "onnx_model"}
assert set(MODULES) == set(BACKBONES)

__all__ = ["BACKBONES", "DEFAULT_BACKBONE", "BackboneSpec", "Preprocessing", "backbone_module", "load_backbone",
           "resolve_spec"]  # fmt: skip


def backbone_module(name: str) -> Any:
    if name not in MODULES:
        raise ValueError(unknown_backbone(name))
    return importlib.import_module(f"ecos_core.embedding.backbones.{MODULES[name]}")


def load_backbone(spec: BackboneSpec | None = None, weights_path: str | Path | None = None,
                  device: str = "cpu") -> tuple["nn.Module", BackboneSpec]:  # fmt: skip
    """Frozen feature extractor and the spec describing its feature space.

    Given a spec (e.g. from a probe), the local weights must hash to spec.weights_sha256,
    otherwise ValueError, because features from different weights are not comparable; a
    backbone this machine lacks raises BackboneUnavailable (a FileNotFoundError) saying how
    to get it. Without a spec: the default backbone with the actual file's digest.
    `weights_path`: a local file to use instead of the packaged one (or the model's URL)."""
    name = DEFAULT_BACKBONE if spec is None else spec.name
    return backbone_module(name).load(spec, weights_path, device)


def resolve_spec(name: str = DEFAULT_BACKBONE, preprocessing: Preprocessing = Preprocessing(), model_url: str | None = None,
                 model_sha256: str | None = None, feature_dim: int | None = None) -> BackboneSpec:  # fmt: skip
    """The spec of the cloud's feature space for these settings, with its weights verified
    (loaded once, so a missing package or a bad file fails here, before any work)."""
    if name == USER_MODEL:
        if model_url is None or model_sha256 is None:
            raise ValueError(f"backbone {USER_MODEL!r} needs a model URL and its sha256")
        return backbone_module(name).resolve(model_url, model_sha256, preprocessing, feature_dim)
    if name not in PACKAGED:
        raise ValueError(unknown_backbone(name))
    _, default = load_backbone(BackboneSpec(name=name))
    return BackboneSpec(name=name, weights_sha256=default.weights_sha256, preprocessing=preprocessing)

