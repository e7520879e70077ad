"""Spatial resampling by a factor of two (paper §3.1 encoder/decoder, §3.2 UNet)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Downsample(nn.Module):
    """Halve height and width.

    ``use_conv=True``: a 3×3 convolution with stride 2. With ``asymmetric_padding=True`` the input is
    padded by one pixel on the right and bottom only and the convolution uses no padding (the layout of
    the LDM autoencoder); otherwise the convolution pads one pixel on every side (the UNet layout).
    ``use_conv=False``: 2×2 average pooling (``out_channels`` must then equal ``channels``).
    Odd sizes: the symmetric convolution gives ``ceil(h/2)``, the other two ``floor(h/2)``; the UNet
    only feeds even sizes.
    """

    def __init__(self, channels: int, out_channels: int | None = None, *, use_conv: bool = True,
                 asymmetric_padding: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        if not use_conv and out_channels != channels:
            raise ValueError("Downsample without a convolution cannot change the channel count")
        self.channels, self.out_channels = channels, out_channels
        self.use_conv = use_conv
        self.asymmetric_padding = asymmetric_padding
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels, 3, stride=2, padding=0 if asymmetric_padding else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C, H, W] → [B, C_out, H/2, W/2]
        if not self.use_conv:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        if self.asymmetric_padding:
            x = F.pad(x, (0, 1, 0, 1))  # right and bottom only
        return self.conv(x)


class Upsample(nn.Module):
    """Double height and width: nearest-neighbour ×2, then (``use_conv=True``) a 3×3 convolution."""

    def __init__(self, channels: int, out_channels: int | None = None, *, use_conv: bool = True):
        super().__init__()
        out_channels = out_channels or channels
        if not use_conv and out_channels != channels:
            raise ValueError("Upsample without a convolution cannot change the channel count")
        self.channels, self.out_channels = channels, out_channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C, H, W] → [B, C_out, 2H, 2W]
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.use_conv else x
