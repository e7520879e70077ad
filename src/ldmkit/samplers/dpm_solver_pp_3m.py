"""DPM-Solver++(3M): the third-order member of the multistep data-prediction solvers of Lu et al. 2022
("DPM-Solver++", §4.2; Algorithm 2 is the second-order one), in its ODE form (k-diffusion's
``sample_dpmpp_3m_sde`` at η = 0, up to the curvature weight noted below).

In σ-space (x̃ = x_t / sqrt(ᾱ) = x0 + σ ε) with λ = -log σ the probability-flow ODE has the exact solution
(the data-prediction form DPM-Solver++ builds on)

    x̃(λ + h) = e^{-h} x̃(λ) + ∫_0^h e^{-(h-u)} x0(λ + u) du.

Expanding x0(λ + u) = D + u D' + u²/2 D'' and integrating term by term gives the coefficients
∫_0^h e^{-(h-u)} u^n/n! du = h^{n+1} φ_{n+1}(-h):

    x̃_next = e^{-h} x̃ + (1 - e^{-h}) D + h² φ_2 D' + h³ φ_3 D'',
    h φ_2 = 1 - (1 - e^{-h})/h,   h² φ_3 = 1/2 - 1/h + (1 - e^{-h})/h².

D' and D'' are those of the quadratic through the last three predictions (Newton's divided differences),
so the update's local error is O(h⁴) (third order). The first step is first order (DDIM), the second
uses the line through two predictions; the step to σ = 0 returns x̂0. (k-diffusion's ``sample_dpmpp_3m_sde``
weights the divided difference x0[λ, λ_1, λ_2] = D''/2 by h³ φ_3, i.e. half the curvature term, which leaves it
second order: tests/unit/test_samplers.py::test_third_order_samplers_converge_at_third_order.) With 10 steps or
fewer on a ladder of long λ-steps (karras on the LDM linear schedule) the quadratic extrapolation overshoots;
dpm++2m or unipc are safer there.
"""

from __future__ import annotations

import math

import torch

from ldmkit.samplers.common import Callback, Ladder, LadderModel, end_step
from ldmkit.samplers.registry import register_sampler


def exponential_weights(h: float) -> tuple[float, float, float]:
    """(1 - e^{-h}, h² φ_2(-h), h³ φ_3(-h)) = ∫_0^h e^{-(h-u)} u^n/n! du for n = 0, 1, 2: the weights of D, D'
    and D'' over a step of length h in λ (also UniPC's order conditions)."""
    one = -math.expm1(-h)
    return one, h - one, h * h / 2 - h + one


@register_sampler("dpm++3m", spacing="karras")
@torch.no_grad()
def dpm_solver_pp_3m(model: LadderModel, x: torch.Tensor, ladder: Ladder, *, callback: Callback | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """DPM-Solver++(3M); the shared arguments of :func:`ldmkit.samplers.ddim.ddim`. Default spacing: karras."""
    history: list[tuple[torch.Tensor, float]] = []  # (x̂0, λ) of past steps, newest last
    for i in range(len(ladder)):
        sigma, sigma_next = ladder.sigma(i), ladder.sigma(i + 1)
        pred = model(x, i)
        lam = -math.log(sigma)
        if sigma_next == 0.0:
            x_tilde = pred.x0
        else:
            h = math.log(sigma) - math.log(sigma_next)  # λ_next - λ
            w0, w1, w2 = exponential_weights(h)
            x_tilde = (sigma_next / sigma) * (x / math.sqrt(ladder.finite_alpha_bar(i))) + w0 * pred.x0
            if history:
                d0, lam1 = history[-1]
                slope01 = (pred.x0 - d0) / (lam - lam1)  # x0[λ, λ_1]
                if len(history) == 1:
                    x_tilde = x_tilde + w1 * slope01
                else:
                    d1, lam2 = history[-2]
                    slope12 = (d0 - d1) / (lam1 - lam2)  # x0[λ_1, λ_2]
                    curve = (slope01 - slope12) / (lam - lam2)  # x0[λ, λ_1, λ_2] = D''/2
                    # Newton's quadratic p(u) = D + x0[λ, λ_1] u + x0[λ, λ_1, λ_2] u (u + λ - λ_1) at u = 0:
                    slope = slope01 + (lam - lam1) * curve  # D'
                    x_tilde = x_tilde + w1 * slope + w2 * (2 * curve)
        history = (history + [(pred.x0, lam)])[-2:]
        x = end_step(callback, ladder, i, x_tilde * math.sqrt(ladder.finite_alpha_bar(i + 1)), pred.x0)
    return x
