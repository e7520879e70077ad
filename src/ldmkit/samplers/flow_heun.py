"""Heun's 2nd-order method on the flow ODE dy/ds = u (rectified flow; Esser et al. 2024, SD3 §2 and §5.3).

In flow time s ∈ [0, 1] the sample is ``y_s = (1 - s) x0 + s ε`` and its velocity ``u = (y - x̂0) / s``. Each
step takes an Euler step from s to s', evaluates the velocity at its end and averages the two; the last step
(to s = 0) is a plain Euler step. The ladder's ᾱ gives s and the scale between views exactly — ``y = x_t / (a +
b)``, ``s = b / (a + b)`` with a = sqrt(ᾱ), b = sqrt(1 - ᾱ) — including ᾱ = 0 (s = 1, y = ε), so no σ stand-in
is needed. Works for any schedule; on the flow schedule it is the Heun sampler of flow-matching models. (Its
Euler counterpart needs no file of its own: an Euler step in s lands exactly where DDIM's and σ-space Euler's
do, whatever the time variable.) ``steps`` steps cost 2·steps - 1 denoiser evaluations.
"""

from __future__ import annotations

import math

import torch

from ldmkit.samplers.common import Callback, Ladder, LadderModel, end_step
from ldmkit.samplers.registry import register_sampler


def _flow_view(alpha_bar: float) -> tuple[float, float]:
    """(s, a + b): the flow time of ᾱ and the factor from y_s back to x_t."""
    a, b = math.sqrt(alpha_bar), math.sqrt(max(1.0 - alpha_bar, 0.0))
    return b / (a + b), a + b


@register_sampler("flow-heun", spacing="trailing")
@torch.no_grad()
def flow_heun(model: LadderModel, x: torch.Tensor, ladder: Ladder, *, callback: Callback | None = None,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Heun in flow time; the shared arguments of :func:`ldmkit.samplers.ddim.ddim`. Default spacing: trailing."""
    for i in range(len(ladder)):
        (s, to_x), (s_next, to_x_next) = _flow_view(ladder.alpha_bars[i]), _flow_view(ladder.alpha_bars[i + 1])
        pred = model(x, i)
        y = x / to_x  # y_s = (1 - s) x0 + s ε
        velocity = (y - pred.x0) / s
        y_next = y + (s_next - s) * velocity
        if s_next > 0:
            velocity_next = (y_next - model(y_next * to_x_next, i + 1).x0) / s_next
            y_next = y + (s_next - s) * (velocity + velocity_next) / 2
        x = end_step(callback, ladder, i, y_next * to_x_next, pred.x0)
    return x
