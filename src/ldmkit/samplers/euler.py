"""Euler sampler on the probability-flow ODE in σ-space (Karras et al. 2022, Algorithm 2 without churn).

With x̃ = x_t / sqrt(ᾱ_t) = x0 + σ ε, the ODE is dx̃/dσ = (x̃ - D(x̃; σ))/σ, D the denoiser's x0.
Defaults to the Karras σ ladder (ρ = 7). On the same ladder this equals DDIM with η = 0.
"""

from __future__ import annotations

import math

import torch

from ldmkit.conditioning.types import Conditioning
from ldmkit.denoisers.wrapper import Denoiser
from ldmkit.samplers.common import Callback, prepare, require_no_eta
from ldmkit.samplers.registry import SAMPLERS


@SAMPLERS.register("euler")
@torch.no_grad()
def euler(denoiser: Denoiser, noise: torch.Tensor, cond: Conditioning | None = None, *, steps: int = 50,
          uncond: Conditioning | None = None, guidance: float = 1.0, guidance_rescale: float = 0.0,
          spacing: str | None = None, eta: float = 0.0, start: torch.Tensor | None = None, strength: float = 1.0,
          callback: Callback | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Euler sampler; arguments as :func:`ldmkit.samplers.ddim.ddim`. Default spacing: karras."""
    require_no_eta("euler", eta)
    run = prepare(denoiser, noise, cond, steps=steps, uncond=uncond, guidance=guidance,
                  guidance_rescale=guidance_rescale, spacing=spacing, default_spacing="karras", start=start,
                  strength=strength, callback=callback, generator=generator)
    ladder = run.ladder
    x = run.x
    for i in range(len(run)):
        sigma, sigma_next = ladder.sigma(i), ladder.sigma(i + 1)
        pred = run.predict(x, i)
        x_tilde = x / math.sqrt(ladder.finite_alpha_bar(i))  # x0 + σ ε
        slope = (x_tilde - pred.x0) / sigma  # dx̃/dσ
        x_tilde = x_tilde + (sigma_next - sigma) * slope
        x = run.end_step(i, x_tilde * math.sqrt(ladder.finite_alpha_bar(i + 1)), pred.x0)
    return x
