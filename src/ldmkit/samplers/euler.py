"""Euler sampler on the probability-flow ODE in σ-space (Karras et al. 2022, Algorithm 2 without churn).

With x̃ = x_t / sqrt(ᾱ_t) = x0 + σ ε, the ODE is dx̃/dσ = (x̃ - D(x̃; σ))/σ, D the denoiser's x0.
Defaults to the Karras σ ladder (ρ = 7). On the same ladder this equals DDIM with η = 0.
"""

from __future__ import annotations

import math

import torch

from ldmkit.samplers.common import Callback, Ladder, LadderModel, end_step
from ldmkit.samplers.registry import register_sampler


@register_sampler("euler", spacing="karras")
@torch.no_grad()
def euler(model: LadderModel, x: torch.Tensor, ladder: Ladder, *, callback: Callback | None = None,
          generator: torch.Generator | None = None) -> torch.Tensor:
    """Euler sampler; the shared arguments of :func:`ldmkit.samplers.ddim.ddim`. Default spacing: karras."""
    for i in range(len(ladder)):
        sigma, sigma_next = ladder.sigma(i), ladder.sigma(i + 1)
        pred = model(x, i)
        x_tilde = x / math.sqrt(ladder.finite_alpha_bar(i))  # x0 + σ ε
        slope = (x_tilde - pred.x0) / sigma  # dx̃/dσ
        x_tilde = x_tilde + (sigma_next - sigma) * slope
        x = end_step(callback, ladder, i, x_tilde * math.sqrt(ladder.finite_alpha_bar(i + 1)), pred.x0)
    return x
