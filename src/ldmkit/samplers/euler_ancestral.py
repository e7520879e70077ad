"""Euler ancestral sampler in σ-space (the ancestral step of Song et al. 2021, "Score-Based Generative Modeling
through SDEs", §4.2 / App. F, taken with an Euler step as in k-diffusion's ``sample_euler_ancestral``, η = 1).

With x̃ = x_t / sqrt(ᾱ) = x0 + σ ε, a step from σ to σ' splits σ'² into the part the DDPM posterior
q(x_{t'} | x_t, x0) leaves as fresh noise and the part kept from x̃ (Ho et al. 2020, eq. 7, in σ-space):

    σ_up² = σ'² (σ² - σ'²) / σ²,   σ_down² = σ'² - σ_up² = σ'⁴ / σ².

It takes the Euler step of the probability-flow ODE dx̃/dσ = (x̃ - D)/σ from σ to σ_down and adds σ_up z.
The Euler step to σ_down lands on x̂0 + σ_down ε̂, the DDPM posterior mean, so on the same ladder and noise this
is DDPM ancestral sampling (and DDIM with η = 1). The step to σ = 0 returns x̂0. Noise is drawn from
``generator``; η is fixed at 1 (DDIM with η gives the other amounts of fresh noise).
"""

from __future__ import annotations

import math

import torch

from ldmkit.samplers.common import Callback, Ladder, LadderModel, end_step, randn_like
from ldmkit.samplers.registry import register_sampler


@register_sampler("euler-a", spacing="karras")
@torch.no_grad()
def euler_ancestral(model: LadderModel, x: torch.Tensor, ladder: Ladder, *, callback: Callback | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Euler ancestral sampler; the shared arguments of :func:`ldmkit.samplers.ddim.ddim`. Default spacing: karras."""
    for i in range(len(ladder)):
        sigma, sigma_next = ladder.sigma(i), ladder.sigma(i + 1)
        pred = model(x, i)
        sigma_up = sigma_next * math.sqrt(max(1 - (sigma_next / sigma) ** 2, 0.0))
        sigma_down = sigma_next**2 / sigma
        x_tilde = x / math.sqrt(ladder.finite_alpha_bar(i))  # x0 + σ ε
        slope = (x_tilde - pred.x0) / sigma  # dx̃/dσ
        x_tilde = x_tilde + (sigma_down - sigma) * slope
        if sigma_up > 0:
            x_tilde = x_tilde + sigma_up * randn_like(x_tilde, generator)
        x = end_step(callback, ladder, i, x_tilde * math.sqrt(ladder.finite_alpha_bar(i + 1)), pred.x0)
    return x
