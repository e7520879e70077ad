"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2): multistep 2nd order, data prediction.

In σ-space (x̃ = x_t / sqrt(ᾱ) = x0 + σ ε) with λ = -log σ and h = λ_next - λ:
x̃_next = (σ_next/σ) x̃ - (e^{-h} - 1) D, where D = x̂0 on the first step and
D = (1 + 1/(2r)) x̂0 - 1/(2r) x̂0_prev, r = h_prev/h, afterwards. The step to σ = 0 returns D = x̂0.
"""

from __future__ import annotations

import math

import torch

from ldmkit.samplers.common import Callback, Ladder, LadderModel, end_step
from ldmkit.samplers.registry import register_sampler


@register_sampler("dpm++2m", spacing="karras")
@torch.no_grad()
def dpm_solver_pp_2m(model: LadderModel, x: torch.Tensor, ladder: Ladder, *, callback: Callback | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """DPM-Solver++(2M); the shared arguments of :func:`ldmkit.samplers.ddim.ddim`. Default spacing: karras."""
    previous: torch.Tensor | None = None
    h_previous = 0.0
    for i in range(len(ladder)):
        sigma, sigma_next = ladder.sigma(i), ladder.sigma(i + 1)
        pred = model(x, i)
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
        x = end_step(callback, ladder, i, x_tilde * math.sqrt(ladder.finite_alpha_bar(i + 1)), pred.x0)
    return x
