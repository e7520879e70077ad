"""Heun's 2nd-order sampler in σ-space (Karras et al. 2022, Algorithm 1, deterministic).

Each step takes an Euler step, evaluates the slope at its end and averages the two slopes; the last
step (to σ = 0) is a plain Euler step. ``steps`` steps cost 2·steps - 1 denoiser evaluations.
"""

from __future__ import annotations

import math

import torch

from ldmkit.samplers.common import Callback, Ladder, LadderModel, end_step
from ldmkit.samplers.registry import register_sampler


@register_sampler("heun", spacing="karras")
@torch.no_grad()
def heun(model: LadderModel, x: torch.Tensor, ladder: Ladder, *, callback: Callback | None = None,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """Heun sampler; the shared arguments of :func:`ldmkit.samplers.ddim.ddim`. Default spacing: karras."""
    for i in range(len(ladder)):
        sigma, sigma_next = ladder.sigma(i), ladder.sigma(i + 1)
        pred = model(x, i)
        x_tilde = x / math.sqrt(ladder.finite_alpha_bar(i))  # x0 + σ ε
        slope = (x_tilde - pred.x0) / sigma
        x_next = x_tilde + (sigma_next - sigma) * slope
        if sigma_next > 0:
            scale_next = math.sqrt(ladder.finite_alpha_bar(i + 1))
            slope_next = (x_next - model(x_next * scale_next, i + 1).x0) / sigma_next
            x_next = x_tilde + (sigma_next - sigma) * (slope + slope_next) / 2
        x = end_step(callback, ladder, i, x_next * math.sqrt(ladder.finite_alpha_bar(i + 1)), pred.x0)
    return x
