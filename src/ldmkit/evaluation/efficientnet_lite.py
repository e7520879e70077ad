"""EfficientNet-Lite0 (Tan & Le 2019, the "lite" variant for mobile accelerators), ImageNet-1k weights.

The network of the ``efficientnet-lite0`` asset: MBConv blocks without squeeze-excitation, ReLU6,
batch norm with eps 1e-3, TensorFlow "same" padding; module names follow the ``efficientnet_pytorch``
layout of the weights file (``_conv_stem``, ``_blocks.N._expand_conv``, …), so the file loads strictly:
every key used, every shape checked.

As a feature network (name ``efflite0``): images are quantised to 8 bits, resized to 224 × 224 (the
whole image, no crop) with antialiased bilinear interpolation, scaled as (x − 0.5) / 0.5, and the
1280-d globally pooled features before the classifier are returned. Distances computed with it are
called FD-EffLite0 / KD-EffLite0 / P&R-EffLite0; they are not comparable to published FID values.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ldmkit.evaluation.extractor import FEATURE_EXTRACTORS, to_uint8_levels
from ldmkit.evaluation.weights import asset_file, read_state_dict
from ldmkit.io.model_dir import load_state_strict

BN_EPS = 1e-3
# One row per stage: (kernel, stride, expansion, output channels, repeats); width and depth multipliers 1.0.
LITE0_STAGES = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "same" padding: output size ceil(input / stride), extra pixel on the bottom/right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, [left, right, top, bottom])
        return super().forward(x)


class MBConvBlock(nn.Module):
    """Inverted residual: 1×1 expand → depthwise k×k → 1×1 project, identity skip when shapes allow."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(in_ch, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv2d(mid, out_ch, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.skip = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x  # [B, C_in, H, W]
        if self.has_expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))  # [B, C_in * e, H, W]
        h = F.relu6(self._bn1(self._depthwise_conv(h)))  # [B, C_in * e, H / s, W / s]
        h = self._bn2(self._project_conv(h))  # [B, C_out, H / s, W / s]
        return x + h if self.skip else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0; :meth:`forward` returns (pooled features [B, 1280], logits [B, num_classes])."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        blocks = []
        in_ch = STEM_CHANNELS
        for kernel, stride, expand, out_ch, repeats in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConvBlock(in_ch, out_ch, kernel, stride if i == 0 else 1, expand))
                in_ch = out_ch
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(in_ch, HEAD_CHANNELS, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(HEAD_CHANNELS, eps=BN_EPS)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu6(self._bn0(self._conv_stem(x)))  # [B, 32, H/2, W/2]
        for block in self._blocks:
            h = block(h)  # ... → [B, 320, H/32, W/32]
        h = F.relu6(self._bn1(self._conv_head(h)))  # [B, 1280, H/32, W/32]
        features = h.mean(dim=(2, 3))  # [B, 1280]
        return features, self._fc(features)  # [B, 1280], [B, num_classes]


def preprocess_efflite(images: torch.Tensor, resolution: int = 224) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] → network input [B, 3, r, r]: 8-bit levels, antialiased bilinear resize, (x−0.5)/0.5."""
    x = to_uint8_levels(images) / 255.0  # [B, 3, H, W] in [0, 1]
    if x.shape[-2:] != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
    return (x - 0.5) / 0.5  # [B, 3, r, r]


class EffLite0Features:
    """Feature extractor ``efflite0``: pooled 1280-d EfficientNet-Lite0 features (and ImageNet logits)."""

    name = "efflite0"
    resolution = 224
    dim = HEAD_CHANNELS
    label = "EffLite0"
    protocol = ("efficientnet-lite0 imagenet-1k (efficientnet-lite0-57934424) pooled-1280 | 8-bit quantised | "
                "resize 224x224 bilinear antialias, no crop | (x-0.5)/0.5")

    def __init__(self, network: EfficientNetLite0, device: torch.device | str = "cpu"):
        self.network = network.eval().requires_grad_(False).to(device)
        self.device = torch.device(device)

    @torch.inference_mode()
    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, H, W] in [-1, 1] → features [B, 1280], ImageNet logits [B, 1000] (float32)."""
        x = preprocess_efflite(images.to(self.device), self.resolution)
        features, logits = self.network(x)
        return features.float(), logits.float()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(images)[0]

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet-1k class logits [B, 1000]: the network as a classifier."""
        return self.features_and_logits(images)[1]


def load_efficientnet_lite0(weights: str | Path, num_classes: int = 1000) -> EfficientNetLite0:
    """EfficientNet-Lite0 with the weights of ``weights`` (safetensors or plain .pth), loaded strictly."""
    network = EfficientNetLite0(num_classes=num_classes)
    load_state_strict(network, read_state_dict(weights), str(weights))
    return network.eval()


@FEATURE_EXTRACTORS.register("efflite0")
def build_efflite0(*, device: torch.device | str = "cpu", weights: str | Path | None = None) -> EffLite0Features:
    """The ``efflite0`` extractor; ``weights`` is a file or directory, else the ``efficientnet-lite0`` asset."""
    path = asset_file("efficientnet-lite0", "model.safetensors", weights, "--feature-weights")
    return EffLite0Features(load_efficientnet_lite0(path), device=device)
