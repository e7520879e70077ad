"""Samplers: plain functions with one signature, one algorithm per file (DESIGN habit 3).

``get(name)`` returns the function; ``names()`` lists them. Every sampler is called as::

    latents = get("dpm++2m")(denoiser, noise, cond, steps=20, uncond=null_cond, guidance=7.5, generator=g)

See :func:`ldmkit.samplers.ddim.ddim` for the arguments.
"""

from __future__ import annotations

from ldmkit.samplers import ddim, ddpm, dpm_solver_pp_2m, euler, heun, plms  # noqa: F401  (registers them)
from ldmkit.samplers.common import Callback, Ladder, SamplingCancelled, img2img_steps, make_ladder
from ldmkit.samplers.guidance import guided_prediction
from ldmkit.samplers.registry import SAMPLERS, Sampler


def get(name: str) -> Sampler:
    """The sampler registered as ``name`` (ConfigError naming the known ones otherwise)."""
    return SAMPLERS.get(name)


def names() -> list[str]:
    return SAMPLERS.names()


__all__ = ["Callback", "Ladder", "SAMPLERS", "Sampler", "SamplingCancelled", "get", "guided_prediction",
           "img2img_steps", "make_ladder", "names"]
