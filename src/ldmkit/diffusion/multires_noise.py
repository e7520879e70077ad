"""Multi-resolution ("pyramid") training noise: more of the noise in the low frequencies, so the model learns to
change an image's large-scale layout and tone, not only its detail (Whitaker 2023, "Multi-Resolution Noise for
Diffusion Model Training"; kohya sd-scripts' ``--multires_noise_iterations``).

    ε' = (ε + Σ_{i=1..N} d^i u_i) / sqrt(1 + Σ_{i=1..N} d^{2i}),   u_i = up(z_i) / s_i,

with z_i ~ N(0, I) on the grid (⌊h / 2^i⌋, ⌊w / 2^i⌋) (at least 1×1), ``up`` bilinear back to h×w and s_i the
exact standard deviation of up(z_i) at each position. Bilinear upsampling of white noise has the variance
Σ_k w_k² < 1 (w its interpolation weights), which changes from position to position; dividing by it makes every
u_i, and so ε', exactly N(0, 1) at every position. Only the correlation between positions changes, which is the
point. (sd-scripts divides by the batch's empirical standard deviation instead, which leaves the per-position
variance uneven.)
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from ldmkit.diffusion.noise import randn


@lru_cache(maxsize=64)
def _upsampled_std(low: int, high: int) -> torch.Tensor:
    """[high] standard deviation of 1-D linear upsampling (align_corners=False) of ``low`` unit-variance values."""
    weights = F.interpolate(torch.eye(low, dtype=torch.float64)[None], size=high, mode="linear",
                            align_corners=False)[0]  # [low, high]: column j holds position j's weights
    return weights.pow(2).sum(dim=0).sqrt()


def multires_noise(noise: torch.Tensor, levels: int, discount: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """``noise`` [B, C, h, w] (standard normal) with ``levels`` coarser levels added at weights ``discount``^i,
    rescaled to unit variance at every position; ``levels = 0`` returns ``noise`` itself."""
    if levels <= 0:
        return noise
    _, _, h, w = noise.shape
    total, weight_squares = noise.float(), 1.0
    for i in range(1, levels + 1):
        low_h, low_w = max(1, h >> i), max(1, w >> i)
        coarse = randn((*noise.shape[:2], low_h, low_w), device=noise.device, generator=generator)
        up = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)  # [B, C, h, w]
        # bilinear = the outer product of two 1-D linear interpolations, so its variance factorises too
        std = torch.outer(_upsampled_std(low_h, h), _upsampled_std(low_w, w)).to(noise.device, torch.float32)
        total = total + discount**i * (up / std)
        weight_squares += discount ** (2 * i)
        if low_h == 1 and low_w == 1:  # coarser levels would add the same constant field again
            break
    return (total / math.sqrt(weight_squares)).to(noise.dtype)


__all__ = ["multires_noise"]
