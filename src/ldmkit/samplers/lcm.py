"""Multistep consistency sampling (Song et al. 2023, Algorithm 1; Luo et al. 2023, LCM Algorithm 3).

For a consistency model (e.g. a student of ``ldm distill``): at each ladder level the model's clean estimate is
passed through the consistency function f (:mod:`ldmkit.diffusion.consistency`); unless it was the last level,
that estimate is noised afresh to the next level, x = sqrt(ᾱ') f + sqrt(1 - ᾱ') ε. One step already gives a
sample; 2–4 steps refine it. Stochastic: ε comes from ``generator``. Default spacing: trailing (the first
level is the schedule's last timestep, where the student was trained).
"""

from __future__ import annotations

import math

import torch

from ldmkit.diffusion.consistency import consistency_output
from ldmkit.samplers.common import Callback, Ladder, LadderModel, end_step, randn_like
from ldmkit.samplers.registry import register_sampler


@register_sampler("lcm", spacing="trailing")
@torch.no_grad()
def lcm(model: LadderModel, x: torch.Tensor, ladder: Ladder, *, callback: Callback | None = None,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Consistency sampling; the shared arguments of :func:`ldmkit.samplers.ddim.ddim`."""
    for i in range(len(ladder)):
        pred = model(x, i)
        denoised = consistency_output(x, pred.x0, model.timesteps[i])
        alpha_bar_next = ladder.alpha_bars[i + 1]
        if alpha_bar_next < 1.0:
            x_next = math.sqrt(alpha_bar_next) * denoised + math.sqrt(1 - alpha_bar_next) * randn_like(x, generator)
        else:
            x_next = denoised
        x = end_step(callback, ladder, i, x_next, denoised)
    return x
