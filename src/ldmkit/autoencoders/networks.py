"""Convolutional encoder E and decoder D of the first stage (paper §3.1, appendix G).

Both are stacks of ResNet blocks with GroupNorm + SiLU. The encoder halves the resolution between
levels with a stride-2 convolution on asymmetrically padded input (right/bottom), the decoder doubles
it by nearest-neighbour upsampling + convolution; both have a middle block ResNet → self-attention →
ResNet at the lowest resolution. Being fully convolutional (attention included), they accept any input
whose height and width are multiples of f = 2^(levels - 1), at any size, square or not.
"""

from __future__ import annotations

import torch
from torch import nn

from ldmkit.autoencoders.config import AutoencoderConfig
from ldmkit.nn.attention import SpatialSelfAttention
from ldmkit.nn.norm import group_norm
from ldmkit.nn.resnet import ResnetBlock
from ldmkit.nn.updown import Downsample, Upsample


class _MiddleBlock(nn.Module):
    """ResNet → (self-attention) → ResNet at the lowest resolution."""

    def __init__(self, channels: int, cfg: AutoencoderConfig):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout=cfg.dropout, groups=cfg.groups)
        self.attn = SpatialSelfAttention(channels, groups=cfg.groups) if cfg.mid_attention else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels, dropout=cfg.dropout, groups=cfg.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn(self.block_1(x)))  # [B, C, h, w]


class _Level(nn.Module):
    """ResNet blocks (each optionally followed by self-attention) and an optional resampler."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module], resample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attns = nn.ModuleList(attns)
        self.resample = resample if resample is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block, attn in zip(self.blocks, self.attns):
            x = attn(block(x))
        return self.resample(x)


class Encoder(nn.Module):
    """x [B, in_channels, H, W] → [B, out_channels, H/f, W/f].

    ``out_channels`` is ``2 * latent_channels`` for the KL model (mean and log-variance) and
    ``latent_channels`` for the VQ model.
    """

    def __init__(self, cfg: AutoencoderConfig, out_channels: int):
        super().__init__()
        ch, mult = cfg.base_channels, cfg.channel_mult
        self.conv_in = nn.Conv2d(cfg.in_channels, ch * mult[0], 3, padding=1)
        levels = []
        width = ch * mult[0]
        for i, (m, factor) in enumerate(zip(mult, cfg.level_factors)):
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(width, ch * m, dropout=cfg.dropout, groups=cfg.groups))
                width = ch * m
                attns.append(SpatialSelfAttention(width, groups=cfg.groups)
                             if factor in cfg.attention_factors else nn.Identity())
            last = i == len(mult) - 1
            down = None if last else Downsample(width, use_conv=True, asymmetric_padding=True)
            levels.append(_Level(blocks, attns, down))
        self.levels = nn.ModuleList(levels)
        self.mid = _MiddleBlock(width, cfg)
        self.norm_out = group_norm(width, cfg.groups)
        self.act = nn.SiLU()
        self.conv_out = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # [B, ch*mult[0], H, W]
        for level in self.levels:
            h = level(h)  # halves H, W except at the last level
        h = self.mid(h)  # [B, ch*mult[-1], H/f, W/f]
        return self.conv_out(self.act(self.norm_out(h)))  # [B, out_channels, H/f, W/f]


class Decoder(nn.Module):
    """z [B, latent_channels, h, w] → x̂ [B, out_channels, h·f, w·f]."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        ch, mult = cfg.base_channels, cfg.channel_mult
        width = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.latent_channels, width, 3, padding=1)
        self.mid = _MiddleBlock(width, cfg)
        levels = []
        for i in reversed(range(len(mult))):
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(width, ch * mult[i], dropout=cfg.dropout, groups=cfg.groups))
                width = ch * mult[i]
                attns.append(SpatialSelfAttention(width, groups=cfg.groups)
                             if cfg.level_factors[i] in cfg.attention_factors else nn.Identity())
            up = Upsample(width, use_conv=True) if i > 0 else None
            levels.append(_Level(blocks, attns, up))
        self.levels = nn.ModuleList(levels)  # lowest resolution first
        self.norm_out = group_norm(width, cfg.groups)
        self.act = nn.SiLU()
        self.conv_out = nn.Conv2d(width, cfg.out_channels, 3, padding=1)

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the final convolution: where the adaptive GAN weight measures gradients."""
        return self.conv_out.weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))  # [B, ch*mult[-1], h, w]
        for level in self.levels:
            h = level(h)  # doubles H, W except at the last level
        return self.conv_out(self.act(self.norm_out(h)))  # [B, out_channels, h*f, w*f]
