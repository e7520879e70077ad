"""Samplers: plain functions with one signature, one algorithm per file (DESIGN habit 3).

Sampling is one call with the options as a value::

    options = SamplerOptions(sampler="dpm++2m", steps=20, guidance=7.5, seed=0)
    latents = sample(options, denoiser, noise, cond, uncond)

:func:`sample` builds the ladder and the guided model and calls the sampler registered under
``options.sampler``; ``get(name)`` is that registration (function, default spacing, η), ``names()`` lists
them. A new sampler is one file with ``@register_sampler(...)`` and one import line below.
"""

from __future__ import annotations

from ldmkit.samplers import (  # noqa: F401  (registers them)
    ddim,
    ddpm,
    dpm_solver_pp_2m,
    dpm_solver_pp_2m_sde,
    dpm_solver_pp_3m,
    euler,
    euler_ancestral,
    flow_heun,
    heun,
    lcm,
    plms,
    unipc,
)
from ldmkit.samplers.common import (
    Callback,
    Ladder,
    LadderModel,
    SamplingCancelled,
    Step,
    img2img_steps,
    make_ladder,
)
from ldmkit.samplers.guidance import guided_prediction
from ldmkit.samplers.options import MAX_STEPS, SamplerOptions
from ldmkit.samplers.registry import SAMPLERS, SamplerSpec, register_sampler
from ldmkit.samplers.run import sample


def get(name: str) -> SamplerSpec:
    """The sampler registered as ``name`` (ConfigError naming the closest one otherwise)."""
    return SAMPLERS.get(name)


def names() -> list[str]:
    return SAMPLERS.names()


__all__ = ["Callback", "Ladder", "LadderModel", "MAX_STEPS", "SAMPLERS", "SamplerOptions", "SamplerSpec",
           "SamplingCancelled", "Step", "get", "guided_prediction", "img2img_steps", "make_ladder", "names",
           "register_sampler", "sample"]
