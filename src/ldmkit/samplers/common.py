"""What every sampler shares: the timestep ladder, img2img start, guidance and the per-step callback.

Every sampler has the signature of :func:`ldmkit.samplers.ddim.ddim`::

    sample(denoiser, noise, cond=None, *, steps, uncond=None, guidance=1.0, guidance_rescale=0.0,
           spacing=None, eta=0.0, start=None, strength=1.0, callback=None, generator=None) -> x0 latents

The sampler state ``x`` is always the variance-preserving ``x_t`` at the ladder's current noise level
(samplers that work in σ-space convert inside their step), so callbacks see the same thing whatever the
sampler. The per-step coefficients are Python floats computed on the host before the loop: a step
launches device work only and never waits for the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ldmkit.conditioning.types import Conditioning
from ldmkit.denoisers.wrapper import Denoiser, Prediction
from ldmkit.diffusion.noise import randn
from ldmkit.diffusion.schedules import NoiseSchedule
from ldmkit.errors import ConfigError, LdmkitError
from ldmkit.samplers.guidance import check_guidance, fit_batch, guided_prediction

# callback(step index, total steps, x after the step, predicted x0) -> replacement x or None.
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], "torch.Tensor | None"]


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


class SamplingRun:
    """One prepared sampling call: ladder, starting ``x``, guided predictions, noise and callback."""

    def __init__(self, denoiser: Denoiser, noise: torch.Tensor, cond: Conditioning | None, *, steps: int,
                 uncond: Conditioning | None, guidance: float, guidance_rescale: float, spacing: str,
                 start: torch.Tensor | None, strength: float, callback: Callback | None,
                 generator: torch.Generator | None):
        check_guidance(cond, uncond, guidance, guidance_rescale)
        if start is None and strength != 1.0:
            raise ConfigError(f"strength {strength} applies to img2img only; pass start latents or use strength 1")
        if start is not None and start.shape != noise.shape:
            raise ConfigError(f"start latents {tuple(start.shape)} and noise {tuple(noise.shape)} differ in shape")
        self.denoiser = denoiser
        batch = noise.shape[0]
        self.cond = fit_batch(cond.to(device=noise.device), batch) if cond is not None else None
        self.uncond = fit_batch(uncond.to(device=noise.device), batch) if uncond is not None else None
        self.guidance = float(guidance)
        self.guidance_rescale = float(guidance_rescale)
        self.callback = callback
        self.generator = generator
        self.ladder = make_ladder(denoiser.schedule, steps, spacing, strength)
        self._t = self._timestep_tensors(self.ladder.timesteps, noise)
        # The schedule tables the denoiser reads at every step, copied to the device now, not in the first step.
        table_dtype = torch.float64 if noise.dtype == torch.float64 else torch.float32
        for table in ("alphas_cumprod", "log_sigmas"):
            denoiser.schedule.table(table, noise.device, table_dtype)
        if start is None:
            self.x = noise  # pure noise stands for x_T
        else:
            # img2img (SDEdit): noise the start latents to the first timestep of the shortened ladder.
            self.x = denoiser.schedule.add_noise(start.to(noise.dtype), noise, self._t[0].expand(noise.shape[0]))

    @staticmethod
    def _timestep_tensors(timesteps: tuple[float, ...], like: torch.Tensor) -> list[torch.Tensor]:
        """One scalar tensor per level, all on ``like``'s device and of one dtype: int64 when every
        timestep is whole, else float32 (whole values among them still index the schedule exactly). One
        dtype keeps a compiled network from compiling twice; built once, so steps copy nothing to the device.
        """
        whole = all(float(t).is_integer() for t in timesteps)
        values = torch.tensor([int(t) if whole else t for t in timesteps],
                              dtype=torch.int64 if whole else torch.float32)
        return list(values.to(like.device).unbind())

    def __len__(self) -> int:
        return len(self.ladder)

    def predict(self, x: torch.Tensor, i: int) -> Prediction:
        """The guided prediction at ladder level ``i``."""
        return guided_prediction(self.denoiser, x, self._t[i], self.cond, self.uncond, self.guidance,
                                 self.guidance_rescale)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return randn(x.shape, device=x.device, dtype=x.dtype, generator=self.generator)

    def end_step(self, i: int, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Run the callback after step ``i``; it may return a replacement ``x``."""
        if self.callback is None:
            return x
        replaced = self.callback(i, len(self.ladder), x, x0)
        return x if replaced is None else replaced


def prepare(denoiser: Denoiser, noise: torch.Tensor, cond: Conditioning | None, *, steps: int,
            uncond: Conditioning | None, guidance: float, guidance_rescale: float, spacing: str | None,
            default_spacing: str, start: torch.Tensor | None, strength: float, callback: Callback | None,
            generator: torch.Generator | None) -> SamplingRun:
    """Check the shared arguments and set up a run (``spacing=None`` takes the sampler's default)."""
    return SamplingRun(denoiser, noise, cond, steps=steps, uncond=uncond, guidance=guidance,
                       guidance_rescale=guidance_rescale, spacing=spacing or default_spacing, start=start,
                       strength=strength, callback=callback, generator=generator)


def require_no_eta(sampler: str, eta: float) -> None:
    if eta != 0.0:
        raise ConfigError(f"sampler '{sampler}' has no eta; leave eta at 0 (eta applies to ddim)")
