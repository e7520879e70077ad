"""DDIM inversion (Song, Meng & Ermon 2021, "DDIM", §4.3 and §5.4): the deterministic sampler run backwards,
from clean latents up the ladder to its first level, so that DDIM (η = 0) on the same ladder and condition
brings them back.

Sampling step i maps x_i at ᾱ_i to x_{i+1} = sqrt(ᾱ_{i+1}) x̂0 + sqrt(1 - ᾱ_{i+1}) ε̂ (DDIM eq. 12, η = 0),
with ε̂ the prediction at (x_i, t_i). Inversion undoes the steps last first. x_i is not known yet, so ε̂ is taken
at (x_{i+1}, t_i) — the step's own timestep, the common choice (as in Mokady et al. 2023, "Null-text
Inversion", §3) — and the step is solved for x_i:

    x̂0 = (x_{i+1} - sqrt(1 - ᾱ_{i+1}) ε̂) / sqrt(ᾱ_{i+1}),   x_i = sqrt(ᾱ_i) x̂0 + sqrt(1 - ᾱ_i) ε̂.

Sampling back then misses x_{i+1} by c · (ε̂(x_i) - ε̂(x_{i+1})), c = sqrt(1 - ᾱ_{i+1}) - sqrt(ᾱ_{i+1}/ᾱ_i)
sqrt(1 - ᾱ_i); both factors shrink with the step, so more steps reconstruct better, but a network whose ε̂
changes fast with x (or a large guidance scale) leaves a visible error. ``iterations`` > 0 replaces ε̂ by the
one at the current estimate of x_i that many times (a fixed-point iteration of the step's equation, as in
Pan et al. 2023, "Effective Real Image Editing with Accelerated Iterative Diffusion Inversion"); where it
converges the sampling step lands on x_{i+1} exactly. Each iteration costs one more evaluation per step.
"""

from __future__ import annotations

import math

import torch

from ldmkit.conditioning.types import Conditioning
from ldmkit.config.checks import check_count
from ldmkit.denoisers.wrapper import Denoiser
from ldmkit.errors import ConfigError
from ldmkit.samplers.common import Callback, Ladder, LadderModel, Step
from ldmkit.samplers.guidance import check_guidance
from ldmkit.samplers.options import SamplerOptions


def _unstep(x_next: torch.Tensor, eps: torch.Tensor, a_t: float, a_s: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The x at ᾱ_t = ``a_t`` that a DDIM step with noise estimate ``eps`` maps to ``x_next`` at ᾱ_s = ``a_s``,
    and the step's x̂0 (both [B, C, h, w])."""
    x0 = (x_next - math.sqrt(1 - a_s) * eps) / math.sqrt(a_s)
    return math.sqrt(a_t) * x0 + math.sqrt(1 - a_t) * eps, x0


@torch.no_grad()
def ddim_inversion(model: LadderModel, x0: torch.Tensor, ladder: Ladder, *, iterations: int = 0,
                   callback: Callback | None = None) -> torch.Tensor:
    """The x [B, C, h, w] at the ladder's first level from which DDIM (η = 0) on ``ladder`` returns to ``x0``.

    ``model``: the guided prediction at a level, as samplers take it. ``callback(step)`` runs after inversion step
    ``k`` (which undoes sampling step ``n - 1 - k``); ``step.alpha_bar`` is the level x is now at, ``step.x0`` the
    step's x̂0, and it may return a replacement x.
    """
    iterations = check_count("inversion iterations", iterations, minimum=0)
    ab, n = ladder.alpha_bars, len(ladder)
    x = x0  # at ᾱ_n = 1
    for k in range(n):
        i = n - 1 - k  # undo sampling step i: level i + 1 → level i
        x_next = x
        x, clean = _unstep(x_next, model(x_next, i).eps, ab[i], ab[i + 1])
        for _ in range(iterations):
            x, clean = _unstep(x_next, model(x, i).eps, ab[i], ab[i + 1])
        if callback is not None:
            replaced = callback(Step(index=k, total=n, alpha_bar=ab[i], x=x, x0=clean))
            x = x if replaced is None else replaced
    return x


@torch.no_grad()
def invert(options: SamplerOptions, denoiser: Denoiser, latents: torch.Tensor, cond: Conditioning | None = None,
           uncond: Conditioning | None = None, *, iterations: int = 0,
           callback: Callback | None = None) -> torch.Tensor:
    """Noise latents [B, C, h, w] from which :func:`ldmkit.samplers.sample` with ``options`` (DDIM, η = 0) and the
    same condition returns to ``latents`` [B, C, h, w]; guidance applies as in sampling."""
    if options.sampler != "ddim" or options.eta != 0:
        raise ConfigError(f"inversion reverses DDIM with eta 0; got sampler '{options.sampler}' with eta "
                          f"{options.eta} (sample the inverted noise with sampler 'ddim', eta 0)")
    if options.strength != 1.0:
        raise ConfigError(f"inversion runs the whole ladder; strength must be 1, got {options.strength}")
    check_guidance(cond, uncond, options.guidance, options.guidance_rescale)
    ladder = options.ladder(denoiser.schedule)
    model = LadderModel(options, denoiser, ladder, latents, cond, uncond)
    return ddim_inversion(model, latents, ladder, iterations=iterations, callback=callback)


__all__ = ["ddim_inversion", "invert"]
