"""The frozen feature extractor and the spec that identifies it: kept for existing imports.

The server and every client must embed images with bit-for-bit the same network and
preprocessing, otherwise distances between their features are meaningless. The networks
(MobileNetV2, EfficientNet-Lite0, a user's ONNX model) live in ecos_core/backbones/;
`load_backbone` dispatches on the spec's name and refuses weights that do not match it.
"""

from __future__ import annotations

from ecos_core.backbones import load_backbone, resolve_spec  # noqa: F401
from ecos_core.backbones.common import (  # noqa: F401
    BackboneUnavailable,
    FrozenExtractor,
    file_sha256,
    packaged_weights_path,
)
from ecos_core.backbones.common import FrozenExtractor as FeatureExtractor  # noqa: F401
from ecos_core.backbones.mobilenet_v2 import InvertedResidual, MobileNetV2, load_mobilenet_v2  # noqa: F401
from ecos_core.feature_space import (  # noqa: F401
    FEATURE_DIM,
    MOBILENET_V2_SHA256,
    WEIGHTS_FILENAME,
    WEIGHTS_PACKAGE,
    WEIGHTS_PIP,
    BackboneSpec,
    Preprocessing,
)


def default_weights_path():  # noqa: ANN201
    """MobileNetV2's checkpoint shipped in its weights package, found without importing (running) it."""
    return packaged_weights_path("mobilenet_v2")
