"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
Models", §3): the multistep predictor UniP-2 with the corrector UniC, data prediction, B(h) = 1 - e^{-h}
("bh2": the paper's B_2(h) = e^h - 1 in the data-prediction form).

In σ-space (x̃ = x0 + σ ε) a step of length h in λ = -log σ from x̃ with prediction m0 starts from the
first-order part of the exact solution and adds B(h) Σ_m ρ_m D_m, D_m = (m_m - m0)/r_m the scaled differences
to other predictions at λ + r_m h:

    x̃_next = e^{-h} x̃ + (1 - e^{-h}) m0 + B(h) Σ_m ρ_m D_m.

Matching the Taylor terms of the exact solution fixes ρ by the order conditions Σ_m ρ_m r_m^{n-1} =
n! h φ_{n+1}(-h) / B(h), n = 1 … p (h^{n+1} φ_{n+1}(-h) = ∫_0^h e^{-(h-u)} u^n/n! du; UniC-p then has order
p + 1, the paper's Theorem 3.1).

- UniP-2 (predictor): one difference, to the previous step's prediction (r = -h_prev/h). One condition fixes a
  single ρ only to O(h), and ρ = 1/2 (its h → 0 limit, as the authors' code takes) is used, which makes the
  predictor DPM-Solver++(2M). The first step has no history and is DDIM.
- UniC (corrector): the prediction m' at the predicted point (r = 1) joins the differences and the step is
  redone with ρ solving the conditions for one order more (n = 1, 2; on the first step ρ = 1/2). m' is the
  prediction the next step starts from, so the corrector costs no evaluation; it is not applied after the
  step to σ = 0 (that step returns x̂0).

A callback that replaces x (inpainting's blend) makes m' stale; the next step then evaluates the model again.
"""

from __future__ import annotations

import math

import torch

from ldmkit.samplers.common import Callback, Ladder, LadderModel, end_step
from ldmkit.samplers.dpm_solver_pp_3m import exponential_weights
from ldmkit.samplers.registry import register_sampler


def _corrector_weights(h: float, r: float) -> tuple[float, float]:
    """(ρ_prev, ρ_new) of UniC with differences at r (the previous step) and 1 (the predicted point):
    ρ_prev + ρ_new = b_1, r ρ_prev + ρ_new = b_2, b_n = n! h φ_{n+1}(-h) / B(h)."""
    one, w1, w2 = exponential_weights(h)  # B(h) = 1 - e^{-h} = one
    b1, b2 = w1 / (h * one), 2 * w2 / (h * h * one)
    rho_prev = (b1 - b2) / (1 - r)
    return rho_prev, b1 - rho_prev


@register_sampler("unipc", spacing="karras")
@torch.no_grad()
def unipc(model: LadderModel, x: torch.Tensor, ladder: Ladder, *, callback: Callback | None = None,
          generator: torch.Generator | None = None) -> torch.Tensor:
    """UniPC (bh2, UniP-2 + UniC); the shared arguments of :func:`ldmkit.samplers.ddim.ddim`. Default spacing:
    karras. ``steps`` steps cost ``steps`` denoiser evaluations."""
    x0: torch.Tensor | None = None  # the prediction at x's level, when the last step left a fresh one
    previous: tuple[torch.Tensor, float] | None = None  # (x̂0, λ) of the step before
    for i in range(len(ladder)):
        sigma, sigma_next = ladder.sigma(i), ladder.sigma(i + 1)
        if x0 is None:
            x0 = model(x, i).x0
        if sigma_next == 0.0:
            x = end_step(callback, ladder, i, x0, x0)  # ᾱ = 1: x is x̃
            continue
        lam, h = -math.log(sigma), math.log(sigma) - math.log(sigma_next)
        one = -math.expm1(-h)  # B(h) = 1 - e^{-h}, also the weight of m0
        base = (sigma_next / sigma) * (x / math.sqrt(ladder.finite_alpha_bar(i))) + one * x0  # [B, C, h, w]
        x_tilde = base
        if previous is not None:  # UniP-2: D = (m_prev - m0)/r, ρ = 1/2
            r = (previous[1] - lam) / h
            slope_prev = (previous[0] - x0) / r
            x_tilde = base + (one / 2) * slope_prev
        scale_next = math.sqrt(ladder.finite_alpha_bar(i + 1))
        x0_next = model(x_tilde * scale_next, i + 1).x0  # m' at the predicted point
        if previous is None:  # UniC-1
            x_tilde = base + (one / 2) * (x0_next - x0)
        else:  # UniC-2
            rho_prev, rho_new = _corrector_weights(h, r)
            x_tilde = base + one * (rho_prev * slope_prev + rho_new * (x0_next - x0))
        corrected = x_tilde * scale_next
        x = end_step(callback, ladder, i, corrected, x0)
        previous, x0 = (x0, lam), (x0_next if x is corrected else None)
    return x
