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

from ldmkit.conditioning.types import Conditioning
from ldmkit.denoisers.wrapper import Denoiser
from ldmkit.samplers.common import Callback, prepare, require_no_eta
from ldmkit.samplers.registry import SAMPLERS

# Adams–Bashforth weights for (eps_now, eps_prev, eps_prev2, eps_prev3).
_WEIGHTS = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


# Below this ᾱ a step is taken as a plain DDIM step (ᾱ_T of the LDM schedules is 0.0047 or more).
_MIN_ALPHA_BAR = 1e-3


def _transfer(x: torch.Tensor, eps: torch.Tensor, a_t: float, a_s: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DDIM η = 0 step with noise estimate ``eps``: (x at ᾱ_s, x0 estimate)."""
    x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    return math.sqrt(a_s) * x0 + math.sqrt(1 - a_s) * eps, x0


@SAMPLERS.register("plms")
@torch.no_grad()
def plms(denoiser: Denoiser, noise: torch.Tensor, cond: Conditioning | None = None, *, steps: int = 50,
         uncond: Conditioning | None = None, guidance: float = 1.0, guidance_rescale: float = 0.0,
         spacing: str | None = None, eta: float = 0.0, start: torch.Tensor | None = None, strength: float = 1.0,
         callback: Callback | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """PLMS sampler; arguments as :func:`ldmkit.samplers.ddim.ddim`. Default spacing: trailing."""
    require_no_eta("plms", eta)
    run = prepare(denoiser, noise, cond, steps=steps, uncond=uncond, guidance=guidance,
                  guidance_rescale=guidance_rescale, spacing=spacing, default_spacing="trailing", start=start,
                  strength=strength, callback=callback, generator=generator)
    x = run.x
    ab = run.ladder.alpha_bars
    history: list[torch.Tensor] = []  # past noise estimates, newest last
    for i in range(len(run)):
        a_t, a_s = ab[i], ab[i + 1]
        pred = run.predict(x, i)
        if a_t < _MIN_ALPHA_BAR:
            # ᾱ ≈ 0 (cosine, zero terminal SNR): converting a combined eps to x0 divides by sqrt(ᾱ) and
            # blows up errors; take the plain DDIM step from the denoiser's own x̂0 instead.
            x_next, x0 = math.sqrt(a_s) * pred.x0 + math.sqrt(1 - a_s) * pred.eps, pred.x0
        elif not history and i + 1 < len(run):
            # Pseudo improved Euler: average the noise estimates at both ends of the step.
            x_euler, _ = _transfer(x, pred.eps, a_t, a_s)
            eps_next = run.predict(x_euler, i + 1).eps
            x_next, x0 = _transfer(x, (pred.eps + eps_next) / 2, a_t, a_s)
        else:
            weights = _WEIGHTS[min(len(history) + 1, 4)]
            eps = weights[0] * pred.eps
            for w, past in zip(weights[1:], reversed(history)):
                eps = eps + w * past
            x_next, x0 = _transfer(x, eps, a_t, a_s)
        history = (history + [pred.eps])[-3:]
        x = run.end_step(i, x_next, x0)
    return x
