"""``random-conv``: a small convolutional network with fixed random weights (seed 0), as a feature network
for tests and CPU smoke runs. Its distances react to noise, blur and content like any features, but their
values say nothing about image quality and are labelled FD-RandomConv, KD-RandomConv, never FID."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ldmkit.errors import ConfigError
from ldmkit.evaluation.extractor import FEATURE_EXTRACTORS, to_uint8_levels

SEED = 0


class RandomConvNet(nn.Module):
    """Three stride-2 3×3 convolutions with ReLU; features are the channel means and standard deviations."""

    def __init__(self, width: int = 16):
        super().__init__()
        generator = torch.Generator().manual_seed(SEED)
        chans = [3, width, 2 * width, 2 * width]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in itertools.pairwise(chans))
        with torch.no_grad():
            for conv in self.convs:
                fan_in = conv.weight[0].numel()
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * (2 / fan_in) ** 0.5)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.relu(conv(x))  # [B, C, H/2, W/2] per layer
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)  # [B, 2C]


class RandomConvFeatures:
    """Feature extractor ``random-conv`` (64-d at width 16): 8-bit quantised, resized to 32 px, in [-1, 1]."""

    name = "random-conv"
    resolution = 32
    label = "RandomConv"

    def __init__(self, device: torch.device | str = "cpu", width: int = 16):
        self.network = RandomConvNet(width).eval().requires_grad_(False).to(device)
        self.device = torch.device(device)
        self.dim = 4 * width
        self.protocol = (f"random-conv seed {SEED} width {width} | 8-bit quantised | "
                         f"resize {self.resolution}x{self.resolution} bilinear antialias | x/127.5-1")

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = to_uint8_levels(images.to(self.device)) / 127.5 - 1  # [B, 3, H, W]
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False,
                              antialias=True)
        return self.network(x).float()  # [B, D]


@FEATURE_EXTRACTORS.register("random-conv")
def build_random_conv(*, device: torch.device | str = "cpu", weights: str | Path | None = None) -> RandomConvFeatures:
    """The ``random-conv`` extractor (no weights file: its weights are drawn from a fixed seed)."""
    if weights is not None:
        raise ConfigError("the random-conv feature network has no weights file; drop --feature-weights")
    return RandomConvFeatures(device=device)
