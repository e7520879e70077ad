"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2): multistep 2nd order, data prediction.

In σ-space (x̃ = x_t / sqrt(ᾱ) = x0 + σ ε) with λ = -log σ and h = λ_next - λ:
x̃_next = (σ_next/σ) x̃ - (e^{-h} - 1) D, where D = x̂0 on the first step and
D = (1 + 1/(2r)) x̂0 - 1/(2r) x̂0_prev, r = h_prev/h, afterwards. The step to σ = 0 returns D = x̂0.
"""

from __future__ import annotations

import math

import torch

from ldmkit.conditioning.types import Conditioning
from ldmkit.denoisers.wrapper import Denoiser
from ldmkit.samplers.common import Callback, prepare, require_no_eta
from ldmkit.samplers.registry import SAMPLERS


@SAMPLERS.register("dpm++2m")
@torch.no_grad()
def dpm_solver_pp_2m(denoiser: Denoiser, noise: torch.Tensor, cond: Conditioning | None = None, *,
                     steps: int = 50, uncond: Conditioning | None = None, guidance: float = 1.0,
                     guidance_rescale: float = 0.0, spacing: str | None = None, eta: float = 0.0,
                     start: torch.Tensor | None = None, strength: float = 1.0, callback: Callback | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """DPM-Solver++(2M); arguments as :func:`ldmkit.samplers.ddim.ddim`. Default spacing: karras."""
    require_no_eta("dpm++2m", eta)
    run = prepare(denoiser, noise, cond, steps=steps, uncond=uncond, guidance=guidance,
                  guidance_rescale=guidance_rescale, spacing=spacing, default_spacing="karras", start=start,
                  strength=strength, callback=callback, generator=generator)
    ladder = run.ladder
    x = run.x
    previous: torch.Tensor | None = None
    h_previous = 0.0
    for i in range(len(run)):
        sigma, sigma_next = ladder.sigma(i), ladder.sigma(i + 1)
        pred = run.predict(x, i)
        if sigma_next == 0.0:
            x_tilde, h = pred.x0, math.inf
        else:
            h = math.log(sigma) - math.log(sigma_next)  # λ_next - λ
            data = pred.x0
            if previous is not None:
                r = h_previous / h
                data = (1 + 1 / (2 * r)) * pred.x0 - (1 / (2 * r)) * previous
            x_tilde = (sigma_next / sigma) * (x / math.sqrt(ladder.finite_alpha_bar(i))) - math.expm1(-h) * data
        previous, h_previous = pred.x0, h
        x = run.end_step(i, x_tilde * math.sqrt(ladder.finite_alpha_bar(i + 1)), pred.x0)
    return x
