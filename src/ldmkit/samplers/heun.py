"""Heun's 2nd-order sampler in σ-space (Karras et al. 2022, Algorithm 1, deterministic).

Each step takes an Euler step, evaluates the slope at its end and averages the two slopes; the last
step (to σ = 0) is a plain Euler step. ``steps`` steps cost 2·steps - 1 denoiser evaluations.
"""

from __future__ import annotations

import math

import torch

from ldmkit.conditioning.types import Conditioning
from ldmkit.denoisers.wrapper import Denoiser
from ldmkit.samplers.common import Callback, prepare, require_no_eta
from ldmkit.samplers.registry import SAMPLERS


@SAMPLERS.register("heun")
@torch.no_grad()
def heun(denoiser: Denoiser, noise: torch.Tensor, cond: Conditioning | None = None, *, steps: int = 50,
         uncond: Conditioning | None = None, guidance: float = 1.0, guidance_rescale: float = 0.0,
         spacing: str | None = None, eta: float = 0.0, start: torch.Tensor | None = None, strength: float = 1.0,
         callback: Callback | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Heun sampler; arguments as :func:`ldmkit.samplers.ddim.ddim`. Default spacing: karras."""
    require_no_eta("heun", eta)
    run = prepare(denoiser, noise, cond, steps=steps, uncond=uncond, guidance=guidance,
                  guidance_rescale=guidance_rescale, spacing=spacing, default_spacing="karras", start=start,
                  strength=strength, callback=callback, generator=generator)
    ladder = run.ladder
    x = run.x
    for i in range(len(run)):
        sigma, sigma_next = ladder.sigma(i), ladder.sigma(i + 1)
        pred = run.predict(x, i)
        x_tilde = x / math.sqrt(ladder.finite_alpha_bar(i))  # x0 + σ ε
        slope = (x_tilde - pred.x0) / sigma
        x_next = x_tilde + (sigma_next - sigma) * slope
        if sigma_next > 0:
            scale_next = math.sqrt(ladder.finite_alpha_bar(i + 1))
            slope_next = (x_next - run.predict(x_next * scale_next, i + 1).x0) / sigma_next
            x_next = x_tilde + (sigma_next - sigma) * (slope + slope_next) / 2
        x = run.end_step(i, x_next * math.sqrt(ladder.finite_alpha_bar(i + 1)), pred.x0)
    return x
