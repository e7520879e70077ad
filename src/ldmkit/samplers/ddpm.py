"""DDPM ancestral sampling (Ho et al. 2020, eqs. 6–7), over any subsequence of timesteps.

Between ladder levels t > s the step draws from the posterior q(x_s | x_t, x0 = x̂0) with
β_{t|s} = 1 - ᾱ_t/ᾱ_s: mean sqrt(ᾱ_s) β_{t|s}/(1-ᾱ_t) · x̂0 + sqrt(ᾱ_t/ᾱ_s) (1-ᾱ_s)/(1-ᾱ_t) · x_t and
variance (1-ᾱ_s)/(1-ᾱ_t) · β_{t|s} ("fixed small" β̃). With all T timesteps this is Algorithm 2.
"""

from __future__ import annotations

import math

import torch

from ldmkit.conditioning.types import Conditioning
from ldmkit.denoisers.wrapper import Denoiser
from ldmkit.samplers.common import Callback, prepare, require_no_eta
from ldmkit.samplers.registry import SAMPLERS


@SAMPLERS.register("ddpm")
@torch.no_grad()
def ddpm(denoiser: Denoiser, noise: torch.Tensor, cond: Conditioning | None = None, *, steps: int = 50,
         uncond: Conditioning | None = None, guidance: float = 1.0, guidance_rescale: float = 0.0,
         spacing: str | None = None, eta: float = 0.0, start: torch.Tensor | None = None, strength: float = 1.0,
         callback: Callback | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """DDPM ancestral sampler; arguments as :func:`ldmkit.samplers.ddim.ddim`. Default spacing: trailing."""
    require_no_eta("ddpm", eta)
    run = prepare(denoiser, noise, cond, steps=steps, uncond=uncond, guidance=guidance,
                  guidance_rescale=guidance_rescale, spacing=spacing, default_spacing="trailing", start=start,
                  strength=strength, callback=callback, generator=generator)
    x = run.x
    ab = run.ladder.alpha_bars
    for i in range(len(run)):
        pred = run.predict(x, i)
        a_t, a_s = ab[i], ab[i + 1]
        beta = 1 - a_t / a_s
        coef_x0 = math.sqrt(a_s) * beta / (1 - a_t)
        coef_xt = math.sqrt(a_t / a_s) * (1 - a_s) / (1 - a_t)
        variance = (1 - a_s) / (1 - a_t) * beta
        x = coef_x0 * pred.x0 + coef_xt * x  # posterior mean, [B, C, h, w]
        if variance > 0:
            x = x + math.sqrt(variance) * run.randn_like(x)
        x = run.end_step(i, x, pred.x0)
    return x
