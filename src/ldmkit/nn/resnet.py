"""The residual block shared by the autoencoder (paper §3.1) and the UNet (§3.2; ADM's ResBlock)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ldmkit.nn.init import zero_module
from ldmkit.nn.norm import group_norm


class ResnetBlock(nn.Module):
    """``x + conv(SiLU(GN(conv(SiLU(GN(x))) [+ emb])))``, with a 1×1 skip when the width changes.

    Args:
        in_channels: input channels ``C``.
        out_channels: output channels (default ``in_channels``).
        emb_channels: width ``E`` of an embedding (the UNet's timestep embedding) injected between the
            two convolutions; ``None`` for a block without one (the autoencoder).
        dropout: dropout probability before the second convolution.
        scale_shift: inject the embedding as FiLM, ``GN(h)·(1 + scale) + shift`` (ADM's
            ``use_scale_shift_norm``), instead of adding it before the second norm.
        groups: at most this many normalisation groups (see :func:`ldmkit.nn.norm.group_norm`).
        eps: normalisation epsilon.
        resample: ``"down"`` / ``"up"`` halves / doubles the size inside the block, on both paths,
            by 2×2 average pooling / nearest-neighbour ×2 between the first norm and the first
            convolution (ADM's ``resblock_updown``); ``"none"`` keeps the size.

    The second convolution is zero-initialised (as in ADM), so a fresh block is the identity on its
    skip path: ``block(x) == skip(x)``. Training moves it away from zero at once; this keeps very deep
    stacks well-conditioned at initialisation.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, *, emb_channels: int | None = None,
                 dropout: float = 0.0, scale_shift: bool = False, groups: int = 32, eps: float = 1e-6,
                 resample: Literal["none", "down", "up"] = "none"):
        super().__init__()
        if resample not in ("none", "down", "up"):
            raise ValueError(f"resample must be 'none', 'down' or 'up', not {resample!r}")
        self.resample = resample
        out_channels = out_channels or in_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.scale_shift = scale_shift
        self.norm1 = group_norm(in_channels, groups, eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = None
        if emb_channels is not None:
            self.emb_proj = nn.Linear(emb_channels, 2 * out_channels if scale_shift else out_channels)
        self.norm2 = group_norm(out_channels, groups, eps)
        self.act = nn.SiLU()
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        # x: [B, C, H, W], emb: [B, E] or None
        h = self.act(self.norm1(x))  # [B, C, H, W]
        if self.resample == "down":
            h, x = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)  # [B, C, H/2, W/2]
        elif self.resample == "up":
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")  # [B, C, 2H, 2W]
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        h = self.conv1(h)  # [B, C_out, H', W']
        if self.emb_proj is not None:
            if emb is None:
                raise ValueError("this ResnetBlock was built with emb_channels and needs an embedding")
            e = self.emb_proj(self.act(emb))[:, :, None, None]  # [B, C_out or 2*C_out, 1, 1]
            if self.scale_shift:
                scale, shift = e.chunk(2, dim=1)
                h = self.norm2(h) * (1 + scale) + shift
            else:
                h = self.norm2(h + e)
        else:
            h = self.norm2(h)
        h = self.conv2(self.dropout(self.act(h)))  # [B, C_out, H', W']
        return self.skip(x) + h
