"""DDPM ancestral sampling (Ho et al. 2020, eqs. 6–7), over any subsequence of timesteps.

Between ladder levels t > s the step draws from the posterior q(x_s | x_t, x0 = x̂0) with
β_{t|s} = 1 - ᾱ_t/ᾱ_s: mean sqrt(ᾱ_s) β_{t|s}/(1-ᾱ_t) · x̂0 + sqrt(ᾱ_t/ᾱ_s) (1-ᾱ_s)/(1-ᾱ_t) · x_t and
variance (1-ᾱ_s)/(1-ᾱ_t) · β_{t|s} ("fixed small" β̃). With all T timesteps this is Algorithm 2.
"""

from __future__ import annotations

import math

import torch

from ldmkit.samplers.common import Callback, Ladder, LadderModel, end_step, randn_like
from ldmkit.samplers.registry import register_sampler


@register_sampler("ddpm", spacing="trailing")
@torch.no_grad()
def ddpm(model: LadderModel, x: torch.Tensor, ladder: Ladder, *, callback: Callback | None = None,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """DDPM ancestral sampler; the shared arguments of :func:`ldmkit.samplers.ddim.ddim`. Default spacing: trailing."""
    ab = ladder.alpha_bars
    for i in range(len(ladder)):
        pred = model(x, i)
        a_t, a_s = ab[i], ab[i + 1]
        beta = 1 - a_t / a_s
        coef_x0 = math.sqrt(a_s) * beta / (1 - a_t)
        coef_xt = math.sqrt(a_t / a_s) * (1 - a_s) / (1 - a_t)
        variance = (1 - a_s) / (1 - a_t) * beta
        x = coef_x0 * pred.x0 + coef_xt * x  # posterior mean, [B, C, h, w]
        if variance > 0:
            x = x + math.sqrt(variance) * randn_like(x, generator)
        x = end_step(callback, ladder, i, x, pred.x0)
    return x
