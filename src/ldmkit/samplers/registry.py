"""Name → sampler (DESIGN habit 3: one signature, one algorithm per file), with what the caller must know."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ldmkit.config import Registry

# sample(model, x, ladder, *, callback, generator[, eta]) -> x0 latents (see ldmkit.samplers.common)
SamplerFunction = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler: its function, the timestep spacing it uses when none is given, and whether it
    takes DDIM's η."""

    name: str
    function: SamplerFunction
    default_spacing: str
    eta: bool = False


SAMPLERS: Registry[SamplerSpec] = Registry("sampler")


def register_sampler(name: str, *, spacing: str, eta: bool = False) -> Callable[[SamplerFunction], SamplerFunction]:
    """Decorator: ``@register_sampler("ddim", spacing="trailing", eta=True)`` above the sampler function."""

    def add(function: SamplerFunction) -> SamplerFunction:
        SAMPLERS.register(name)(SamplerSpec(name, function, spacing, eta))
        return function

    return add


__all__ = ["SAMPLERS", "SamplerFunction", "SamplerSpec", "register_sampler"]
