"""PLMS: pseudo linear multistep (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models").

As in the LDM code: the noise estimates of past steps are combined with Adams–Bashforth weights
(2nd, 3rd, 4th order as history grows) and the combination is transferred with the DDIM (η = 0) step.
The first step is a pseudo improved Euler step (two evaluations, the second at the next level).
Where ᾱ_t < 1e-3 (the first steps of cosine or zero-terminal-SNR schedules) the eps form is badly
conditioned (x0 = (x - sqrt(1-ᾱ) eps)/sqrt(ᾱ) amplifies errors), so such steps are plain DDIM steps.
"""

from __future__ import annotations

import math

import torch

from ldmkit.samplers.common import Callback, Ladder, LadderModel, end_step
from ldmkit.samplers.registry import register_sampler

# Adams–Bashforth weights for (eps_now, eps_prev, eps_prev2, eps_prev3).
_WEIGHTS = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


# Below this ᾱ a step is taken as a plain DDIM step (ᾱ_T of the LDM schedules is 0.0047 or more).
_MIN_ALPHA_BAR = 1e-3


def _transfer(x: torch.Tensor, eps: torch.Tensor, a_t: float, a_s: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DDIM η = 0 step with noise estimate ``eps``: (x at ᾱ_s, x0 estimate)."""
    x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    return math.sqrt(a_s) * x0 + math.sqrt(1 - a_s) * eps, x0


@register_sampler("plms", spacing="trailing")
@torch.no_grad()
def plms(model: LadderModel, x: torch.Tensor, ladder: Ladder, *, callback: Callback | None = None,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """PLMS sampler; the shared arguments of :func:`ldmkit.samplers.ddim.ddim`. Default spacing: trailing."""
    ab = ladder.alpha_bars
    history: list[torch.Tensor] = []  # past noise estimates, newest last
    for i in range(len(ladder)):
        a_t, a_s = ab[i], ab[i + 1]
        pred = model(x, i)
        if a_t < _MIN_ALPHA_BAR:
            # ᾱ ≈ 0 (cosine, zero terminal SNR): converting a combined eps to x0 divides by sqrt(ᾱ) and
            # blows up errors; take the plain DDIM step from the denoiser's own x̂0 instead.
            x_next, x0 = math.sqrt(a_s) * pred.x0 + math.sqrt(1 - a_s) * pred.eps, pred.x0
        elif not history and i + 1 < len(ladder):
            # Pseudo improved Euler: average the noise estimates at both ends of the step.
            x_euler, _ = _transfer(x, pred.eps, a_t, a_s)
            eps_next = model(x_euler, i + 1).eps
            x_next, x0 = _transfer(x, (pred.eps + eps_next) / 2, a_t, a_s)
        else:
            weights = _WEIGHTS[min(len(history) + 1, 4)]
            eps = weights[0] * pred.eps
            for w, past in zip(weights[1:], reversed(history)):
                eps = eps + w * past
            x_next, x0 = _transfer(x, eps, a_t, a_s)
        history = (history + [pred.eps])[-3:]
        x = end_step(callback, ladder, i, x_next, x0)
    return x
