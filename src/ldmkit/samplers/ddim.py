"""DDIM (Song, Meng & Ermon 2021, eq. 12): deterministic at eta = 0, DDPM-like at eta = 1."""

from __future__ import annotations

import math

import torch

from ldmkit.samplers.common import Callback, Ladder, LadderModel, end_step, randn_like
from ldmkit.samplers.registry import register_sampler


@register_sampler("ddim", spacing="trailing", eta=True)
@torch.no_grad()
def ddim(model: LadderModel, x: torch.Tensor, ladder: Ladder, *, eta: float = 0.0, callback: Callback | None = None,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """Walk ``ladder`` from ``x`` [B, C, h, w] at its first level to clean latents (the signature every sampler
    shares).

    Arguments shared by all samplers:
        model: ``model(x, i)`` is the guided prediction at level ``i`` (:class:`~ldmkit.samplers.common.LadderModel`).
        x: the variance-preserving x_t at the ladder's first level (pure noise, or a noised img2img start).
        ladder: the noise levels to visit (:func:`~ldmkit.samplers.common.make_ladder`).
        callback: ``callback(step)`` after each step (:class:`~ldmkit.samplers.common.Step`); may return a
            replacement x or raise (:class:`~ldmkit.samplers.common.SamplingCancelled`) to stop.
        generator: seeds every random draw (same seed → same samples).
    DDIM's own: ``eta`` (0 deterministic, 1 DDPM-like). Default spacing: trailing.
    """
    ab = ladder.alpha_bars
    for i in range(len(ladder)):
        pred = model(x, i)
        a_t, a_s = ab[i], ab[i + 1]
        # σ_t(η) of eq. 16: η · sqrt((1 - ᾱ_s)/(1 - ᾱ_t)) · sqrt(1 - ᾱ_t/ᾱ_s).
        sigma = eta * math.sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s))
        x = math.sqrt(a_s) * pred.x0 + math.sqrt(max(1 - a_s - sigma**2, 0.0)) * pred.eps  # [B, C, h, w]
        if sigma > 0:
            x = x + sigma * randn_like(x, generator)
        x = end_step(callback, ladder, i, x, pred.x0)
    return x
