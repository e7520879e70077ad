"""How to sample, as one value: the sampler, its steps and spacing, guidance, η, img2img strength and seed.

:class:`SamplerOptions` is validated once, where it is made; every layer below (the pipelines, the batch loop,
:func:`ldmkit.samplers.sample`) passes the value on instead of a dozen keyword arguments, so a new option is
one field here and one use where it matters.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ldmkit.config.checks import check_count, check_finite, check_seed, is_finite_number
from ldmkit.diffusion.schedules import SPACINGS, NoiseSchedule
from ldmkit.errors import ConfigError
from ldmkit.samplers.common import Ladder, make_ladder
from ldmkit.samplers.registry import SAMPLERS, SamplerSpec

#: More steps than this only cost time (the karras ladder also allocates one entry per step).
MAX_STEPS = 10_000


def check_steps(steps: int) -> int:
    check_count("steps", steps)
    if steps > MAX_STEPS:
        raise ConfigError(f"steps must be at most {MAX_STEPS}; got {steps}")
    return steps


def check_guidance_interval(interval: tuple[float, float]) -> tuple[float, float]:
    """``(σ_lo, σ_hi)`` with 0 ≤ σ_lo < σ_hi, both finite (a σ_hi above the schedule's σ_max has no upper bound)."""
    if not isinstance(interval, (tuple, list)) or len(interval) != 2:
        raise ConfigError(f"guidance_interval must be two noise levels (σ_lo, σ_hi); got {interval!r}")
    lo, hi = check_finite("guidance interval σ_lo", interval[0]), check_finite("guidance interval σ_hi", interval[1])
    if not 0.0 <= lo < hi:
        raise ConfigError(f"guidance_interval needs 0 <= σ_lo < σ_hi; got ({lo:g}, {hi:g})")
    return lo, hi


@dataclass(frozen=True)
class SamplerOptions:
    """One sampling request's settings (everything but the condition and the image size)."""

    sampler: str = "dpm++2m"  # a name from ldmkit.samplers.names()
    steps: int = 25  # steps of the full ladder; img2img runs ⌊steps · strength⌋ of them
    spacing: str | None = None  # leading, trailing, linspace or karras; None: the sampler's default
    guidance: float = 3.0  # classifier-free guidance scale s (1: one forward pass, no guidance)
    guidance_rescale: float = 0.0  # φ of Lin et al. 2023 (0: off)
    # (σ_lo, σ_hi): guide only at levels with σ_lo < σ ≤ σ_hi, one conditional pass elsewhere (Kynkäänniemi et
    # al. 2024); σ = sqrt((1 - ᾱ)/ᾱ) where the step evaluates the denoiser. None: guide at every level.
    guidance_interval: tuple[float, float] | None = None
    # Perturbed-attention guidance (Ahn et al. 2024): scale (0: off) and self-attention layers (module path
    # prefixes; empty: the middle block); see ldmkit.samplers.pag.
    pag_scale: float = 0.0
    pag_layers: tuple[str, ...] = ()
    # Adaptive projected guidance (Sadat et al. 2024): the weight of the guidance's part along the conditional
    # prediction (1: plain CFG, APG: 0) and a cap on its norm per sample (0: none); see guidance.project_guidance.
    guidance_parallel: float = 1.0
    guidance_norm_threshold: float = 0.0
    guidance_momentum: float = 0.0  # APG's β: the direction runs as Δ + β·(the previous one); 0: off, −0.5 there
    eta: float = 0.0  # DDIM's η (samplers without η require 0)
    strength: float = 1.0  # img2img: how far into the ladder the input is noised (1: from pure noise)
    seed: int = 0  # seeds the noise stochastic samplers add at each step

    def __post_init__(self) -> None:
        spec = SAMPLERS.get(self.sampler)  # a one-line error naming the closest sampler
        check_steps(self.steps)
        if self.spacing is not None and self.spacing not in SPACINGS:
            raise ConfigError(f"unknown timestep spacing '{self.spacing}'; use one of {', '.join(SPACINGS)}")
        check_finite("guidance", self.guidance)
        if not 0.0 <= check_finite("guidance rescale", self.guidance_rescale) <= 1.0:
            raise ConfigError(f"guidance_rescale must be in [0, 1]; got {self.guidance_rescale}")
        if self.guidance_interval is not None:  # a list from JSON or the command line becomes a tuple
            object.__setattr__(self, "guidance_interval", check_guidance_interval(self.guidance_interval))
        if check_finite("pag scale", self.pag_scale) < 0:
            raise ConfigError(f"pag_scale must be at least 0; got {self.pag_scale} (0 turns it off, 3 is common)")
        layers = self.pag_layers
        if not isinstance(layers, (list, tuple)) or not all(isinstance(layer, str) for layer in layers):
            raise ConfigError(f"pag_layers must be a list of layer names such as ['middle']; got {self.pag_layers!r}")
        object.__setattr__(self, "pag_layers", tuple(self.pag_layers))
        if check_finite("guidance parallel", self.guidance_parallel) < 0:
            raise ConfigError(f"guidance_parallel must be at least 0; got {self.guidance_parallel} (1: plain "
                              "classifier-free guidance, 0: only the part orthogonal to the conditional prediction)")
        if check_finite("guidance norm threshold", self.guidance_norm_threshold) < 0:
            raise ConfigError(f"guidance_norm_threshold must be at least 0; got {self.guidance_norm_threshold} "
                              "(0: no cap)")
        if not -1.0 <= check_finite("guidance momentum", self.guidance_momentum) <= 1.0:
            raise ConfigError(f"guidance_momentum must be in [-1, 1]; got {self.guidance_momentum} (0: off, APG "
                              "uses negative values such as -0.5)")
        check_finite("eta", self.eta)
        if self.eta < 0:
            raise ConfigError(f"eta must be at least 0; got {self.eta}")
        if self.eta != 0 and not spec.eta:
            with_eta = ", ".join(name for name in SAMPLERS.names() if SAMPLERS.get(name).eta)
            raise ConfigError(f"sampler '{self.sampler}' has no eta; leave eta at 0 (eta applies to {with_eta})")
        if not (is_finite_number(self.strength) and 0.0 < self.strength <= 1.0):
            raise ConfigError(f"strength must be in (0, 1]; got {self.strength} (small keeps the input, 1 ignores it)")
        check_seed(self.seed)

    @property
    def spec(self) -> SamplerSpec:
        return SAMPLERS.get(self.sampler)

    def resolved_spacing(self, schedule: NoiseSchedule) -> str:
        """The spacing asked for, else the schedule's own (flow: even in flow time), else the sampler's."""
        return self.spacing or schedule.preferred_spacing or self.spec.default_spacing

    def ladder(self, schedule: NoiseSchedule) -> Ladder:
        """The levels this request visits on ``schedule``."""
        return make_ladder(schedule, self.steps, self.resolved_spacing(schedule), self.strength)

    def replace(self, **changes) -> "SamplerOptions":
        return dataclasses.replace(self, **changes)


__all__ = ["MAX_STEPS", "SamplerOptions", "check_guidance_interval", "check_steps"]
