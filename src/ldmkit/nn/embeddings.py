"""Timestep (and size) embeddings: sinusoidal features (Vaswani et al. 2017, as in DDPM/ADM) and their MLP."""

from __future__ import annotations

import math

import torch
from torch import nn

from ldmkit.nn.init import zero_module


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of (possibly fractional) timesteps.

    ``t`` is ``[B]`` (int or float). Returns float32 ``[B, dim]`` laid out as ``[cos(t·f_i), sin(t·f_i)]``
    with frequencies ``f_i = max_period^(-i/half)``, ``i = 0..half-1`` (the ADM / LDM layout, also
    diffusers' ``flip_sin_to_cos=True, downscale_freq_shift=0``). An odd ``dim`` gets one zero column.
    """
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=t.device) / half
    freqs = torch.exp(-math.log(max_period) * exponent)  # [half]
    args = t.to(torch.float32)[:, None] * freqs[None, :]  # [B, half]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # [B, 2*half]
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """Sinusoidal features of ``t`` followed by ``Linear → SiLU → Linear`` (ADM's ``time_embed``).

    Args:
        frequency_dim: number of sinusoidal features (the UNet uses its ``model_channels``).
        embed_dim: output width (the UNet uses ``4 * model_channels``).
        max_period: the slowest sinusoid's period.
    """

    def __init__(self, frequency_dim: int, embed_dim: int, max_period: float = 10000.0):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.max_period = max_period
        self.linear_1 = nn.Linear(frequency_dim, embed_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(embed_dim, embed_dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = timestep_embedding(t, self.frequency_dim, self.max_period)  # [B, F] float32
        freq = freq.to(self.linear_1.weight.dtype)
        return self.linear_2(self.act(self.linear_1(freq)))  # [B, E]


class SizeEmbedding(nn.Module):
    """Size micro-conditioning (Podell et al. 2023, "SDXL", §2.2): each of the numbers ``sizes`` [B, N] (original
    size, crop corner, output size, in pixels) as ``frequency_dim`` sinusoidal features, concatenated, then
    ``Linear → SiLU → Linear`` to the timestep embedding's width.

    The last layer starts at zero, so the route starts silent: a model given it for fine-tuning begins as it was.
    """

    def __init__(self, frequency_dim: int, embed_dim: int, count: int = 6):
        super().__init__()
        self.frequency_dim, self.count = frequency_dim, count
        self.linear_1 = nn.Linear(count * frequency_dim, embed_dim)
        self.act = nn.SiLU()
        self.linear_2 = zero_module(nn.Linear(embed_dim, embed_dim))

    def forward(self, sizes: torch.Tensor) -> torch.Tensor:
        b = sizes.shape[0]  # sizes: [B, N]
        freq = timestep_embedding(sizes.reshape(-1), self.frequency_dim).reshape(b, -1)  # [B, N*F] float32
        return self.linear_2(self.act(self.linear_1(freq.to(self.linear_1.weight.dtype))))  # [B, E]
