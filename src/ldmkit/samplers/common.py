"""What every sampler shares: the ladder of noise levels, the guided prediction at a level, the step callback.

A sampler is a plain function over a prepared ladder (DESIGN habit 3)::

    sample(model, x, ladder, *, callback=None, generator=None[, eta]) -> x0 latents

``model(x, i)`` is the (guided) prediction at ladder level ``i`` (:class:`LadderModel`); ``x`` is the
variance-preserving ``x_t`` at the ladder's first level, and after step ``i`` it is at level ``i + 1``
(samplers that work in σ-space convert inside their step), so callbacks see the same thing whatever the
sampler. The per-step coefficients are Python floats computed on the host before the loop: a step launches
device work only and never waits for the device. :func:`ldmkit.samplers.sample` builds the ladder, the
model and the starting ``x`` from :class:`~ldmkit.samplers.options.SamplerOptions` and calls the sampler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from ldmkit.conditioning.types import Conditioning
from ldmkit.denoisers.wrapper import Denoiser, Prediction
from ldmkit.diffusion.noise import randn
from ldmkit.diffusion.schedules import NoiseSchedule
from ldmkit.errors import ConfigError, LdmkitError
from ldmkit.samplers.guidance import fit_batch, guided_prediction

if TYPE_CHECKING:
    from ldmkit.samplers.options import SamplerOptions


class SamplingCancelled(LdmkitError):
    """Raised by a callback to stop sampling (e.g. a cancel button); propagates out of the sampler."""


@dataclass(frozen=True)
class Ladder:
    """The noise levels a sampler visits.

    ``timesteps[i]`` (descending, possibly fractional) is where step ``i`` evaluates the denoiser;
    ``alpha_bars[i]`` is ᾱ there, and ``alpha_bars[n] = 1``: the last step lands on clean data.
    """

    timesteps: tuple[float, ...]
    alpha_bars: tuple[float, ...]
    alpha_bar_floor: float  # the smallest ᾱ σ-space samplers may use (stands in for ᾱ = 0)

    def __len__(self) -> int:
        return len(self.timesteps)

    def finite_alpha_bar(self, i: int) -> float:
        """ᾱ at level ``i``, with ᾱ = 0 replaced by the schedule's finite stand-in."""
        return max(self.alpha_bars[i], self.alpha_bar_floor)

    def sigma(self, i: int) -> float:
        """σ = sqrt((1 - ᾱ)/ᾱ) at level ``i`` (finite; 0 at the end of the ladder)."""
        alpha_bar = self.finite_alpha_bar(i)
        return math.sqrt((1 - alpha_bar) / alpha_bar)


@dataclass(frozen=True)
class Step:
    """What a callback is told after step ``index`` of ``total``: ``x`` is now at the ladder level whose ᾱ is
    ``alpha_bar`` (1 after the last step), ``x0`` is the step's prediction of the clean latents."""

    index: int
    total: int
    alpha_bar: float
    x: torch.Tensor  # [B, C, h, w]
    x0: torch.Tensor  # [B, C, h, w]


# callback(step) -> a replacement for step.x, or None to keep it.
Callback = Callable[[Step], "torch.Tensor | None"]


def img2img_steps(steps: int, strength: float) -> int:
    """How many of ``steps`` an img2img run with ``strength`` takes: ⌊steps · strength⌋, at least 1."""
    return min(steps, max(1, math.floor(steps * strength + 1e-9)))


def make_ladder(schedule: NoiseSchedule, steps: int, spacing: str, strength: float = 1.0) -> Ladder:
    """The last ``img2img_steps(steps, strength)`` timesteps of a ``steps``-step ladder with ``spacing``."""
    if not 0.0 < strength <= 1.0:
        raise ConfigError(f"strength must be in (0, 1]; got {strength}")
    full = schedule.timesteps(steps, spacing)
    kept = full[steps - img2img_steps(steps, strength):]
    alpha_bars = schedule.alpha_bar(kept, dtype=torch.float64).tolist() + [1.0]
    floor = 1.0 / (1.0 + schedule.sigma_max**2)
    return Ladder(timesteps=tuple(kept.tolist()), alpha_bars=tuple(alpha_bars), alpha_bar_floor=floor)


class LadderModel:
    """``model(x, i)``: the denoiser's prediction at ladder level ``i`` as a sampling request (``options``) guides it.

    The condition and the null condition are fitted to the batch once (the null one only when the request
    guides), the timesteps become device tensors once, and the schedule tables the denoiser reads are copied to
    the device before the first step. ``guidance_interval`` (σ_lo, σ_hi) guides (classifier-free and
    perturbed-attention) only the levels with σ_lo < σ ≤ σ_hi and runs one conditional pass at the others
    (Kynkäänniemi et al. 2024, "Applying Guidance in a Limited Interval", §3: guidance at high noise collapses
    variety, at low noise it does little); ``scales[i]`` is the (classifier-free, perturbed-attention) pair of
    scales level ``i`` uses. ``history`` holds APG's running direction over this run's calls.
    """

    def __init__(self, options: SamplerOptions, denoiser: Denoiser, ladder: Ladder, like: torch.Tensor,
                 cond: Conditioning | None = None, uncond: Conditioning | None = None):
        batch = like.shape[0]
        self.options, self.denoiser = options, denoiser
        guided = options.guidance != 1.0
        self.cond = fit_batch(cond.to(device=like.device), batch) if cond is not None else None
        self.uncond = fit_batch(uncond.to(device=like.device), batch) if uncond is not None and guided else None
        lo, hi = options.guidance_interval or (-math.inf, math.inf)
        self.scales = tuple((options.guidance, options.pag_scale) if lo < ladder.sigma(i) <= hi else (1.0, 0.0)
                            for i in range(len(ladder)))
        self.history: list[torch.Tensor] = []
        self.timesteps = _timestep_tensors(ladder.timesteps, like)
        table_dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        for table in ("alphas_cumprod", "log_sigmas"):
            denoiser.schedule.table(table, like.device, table_dtype)

    @property
    def schedule(self) -> NoiseSchedule:
        return self.denoiser.schedule

    def __call__(self, x: torch.Tensor, i: int) -> Prediction:
        (scale, pag_scale), o = self.scales[i], self.options
        return guided_prediction(self.denoiser, x, self.timesteps[i], self.cond, self.uncond, scale,
                                 o.guidance_rescale, pag_scale, o.pag_layers, o.guidance_parallel,
                                 o.guidance_norm_threshold, o.guidance_momentum, self.history)


def _timestep_tensors(timesteps: tuple[float, ...], like: torch.Tensor) -> list[torch.Tensor]:
    """One scalar tensor per level, all on ``like``'s device and of one dtype: int64 when every timestep is
    whole, else float32 (whole values among them still index the schedule exactly). One dtype keeps a
    compiled network from compiling twice; built once, so steps copy nothing to the device."""
    whole = all(float(t).is_integer() for t in timesteps)
    values = torch.tensor([int(t) if whole else t for t in timesteps], dtype=torch.int64 if whole else torch.float32)
    return list(values.to(like.device).unbind())


def end_step(callback: Callback | None, ladder: Ladder, i: int, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """After step ``i``: tell the callback where ``x`` now is; it may return a replacement ``x``."""
    if callback is None:
        return x
    replaced = callback(Step(index=i, total=len(ladder), alpha_bar=ladder.alpha_bars[i + 1], x=x, x0=x0))
    return x if replaced is None else replaced


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Fresh noise for stochastic samplers, drawn from ``generator`` (on the CPU, so seeds give the same
    samples on every device)."""
    return randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)


__all__ = ["Callback", "Ladder", "LadderModel", "SamplingCancelled", "Step", "end_step", "img2img_steps",
           "make_ladder", "randn_like"]
