"""Which timesteps training draws: the density p(t) of the objective's expectation over t.

All kinds draw integer timesteps in ``[min, max]`` (default the whole range 0 … T-1):

- ``uniform``: every timestep alike (Ho et al. 2020; what LDM trains with);
- ``logit_normal``: u ~ N(mean, std²), t = min + ⌊sigmoid(u) · n⌋ with n = max - min + 1 timesteps — the
  logit-normal density over the range (Esser et al. 2024, SD3, §3.1; mean 0, std 1 there), which trains the
  middle of the range most;
- ``log_normal``: ln σ ~ N(mean, std²) truncated to the σ of the bounds, t the timestep whose σ_t is nearest in
  log σ — the EDM training density (Karras et al. 2022, §5 / table 1: mean -1.2, std 1.2) on this schedule's
  discrete σ ladder.

The truncation is exact (inverse CDF of the normal between the bounds), so no draw is clamped onto a bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ldmkit.config import option
from ldmkit.diffusion.noise import rand, randint, randn
from ldmkit.diffusion.schedules import NoiseSchedule
from ldmkit.errors import ConfigError

TIMESTEP_KINDS = ("uniform", "logit_normal", "log_normal")


@dataclass(frozen=True)
class TimestepConfig:
    """The distribution of training timesteps."""

    kind: Literal["uniform", "logit_normal", "log_normal"] = option(
        "uniform", help="uniform over [min, max]; logit_normal (SD3: sigmoid of a normal); log_normal (EDM: ln σ "
                        "normal, nearest timestep)")
    mean: float = option(0.0, help="mean of the normal (logit_normal: of logit t, SD3 uses 0; log_normal: of ln σ, "
                                   "EDM uses -1.2)")
    std: float = option(1.0, help="standard deviation of the normal (SD3: 1; EDM: 1.2)", min=1e-6)
    min: int = option(0, help="smallest timestep drawn", min=0)
    max: int | None = option(None, help="largest timestep drawn (null: T - 1)", min=0)

    def __post_init__(self) -> None:
        if self.max is not None and self.max < self.min:
            raise ConfigError(f"timesteps.max={self.max} is below timesteps.min={self.min}")

    def bounds(self, num_timesteps: int) -> tuple[int, int]:
        """(min, max) for a schedule of ``num_timesteps``; one-line error when they fall outside it."""
        high = num_timesteps - 1 if self.max is None else self.max
        if high > num_timesteps - 1:
            raise ConfigError(f"timesteps.max={high} is beyond the schedule's last timestep {num_timesteps - 1}")
        if self.min > high:
            raise ConfigError(f"timesteps.min={self.min} is beyond timesteps.max={high}")
        return self.min, high


def draw_timesteps(batch: int, schedule: NoiseSchedule, config: TimestepConfig, *, device: torch.device | str,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Integer timesteps [batch] (int64) on ``device`` from ``config``, for ``schedule``."""
    num_timesteps = schedule.num_timesteps
    low, high = config.bounds(num_timesteps)
    count = high - low + 1
    if config.kind not in TIMESTEP_KINDS:
        raise ConfigError(f"unknown timestep sampling '{config.kind}'; use one of {', '.join(TIMESTEP_KINDS)}")
    if count == 1:
        return torch.full((batch,), low, dtype=torch.long, device=device)
    if config.kind == "uniform":
        if count == num_timesteps:  # the whole range: the very draw training always made
            return randint(num_timesteps, (batch,), device=device, generator=generator)
        return low + randint(count, (batch,), device=device, generator=generator)
    if config.kind == "logit_normal":
        u = config.mean + config.std * randn((batch,), device=device, dtype=torch.float64, generator=generator)
        return (low + (torch.sigmoid(u) * count).floor().long()).clamp(max=high)
    ladder = schedule.table("log_sigmas", device, torch.float64)[low:high + 1]  # ascending log σ_t
    bounds = float(schedule.log_sigmas[low]), float(schedule.log_sigmas[high])  # from the CPU table: no sync
    log_sigma = _truncated_normal(batch, config.mean, config.std, *bounds, device=device, generator=generator)
    return low + _nearest(ladder, log_sigma)


def _truncated_normal(batch: int, mean: float, std: float, lo: float, hi: float, *, device: torch.device | str,
                      generator: torch.Generator | None) -> torch.Tensor:
    """N(mean, std²) restricted to [lo, hi] by its inverse CDF: x = mean + std · Φ⁻¹(Φ(a) + U (Φ(b) - Φ(a)))."""
    def cdf(x: float) -> float:
        return 0.5 * (1.0 + math.erf((x - mean) / (std * math.sqrt(2.0))))

    a, b = cdf(lo), cdf(hi)
    q = a + (b - a) * rand((batch,), device=device, dtype=torch.float64, generator=generator)
    x = mean + std * math.sqrt(2.0) * torch.erfinv((2 * q - 1).clamp(-1 + 1e-16, 1 - 1e-16))
    return x.clamp(lo, hi)  # only rounding at far tails can step outside


def _nearest(ladder: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Index of the entry of the ascending ``ladder`` (two entries or more) nearest to each of ``values``."""
    right = torch.searchsorted(ladder, values).clamp(1, ladder.shape[0] - 1)
    left = right - 1
    take_left = (values - ladder[left]).abs() <= (ladder[right] - values).abs()
    return torch.where(take_left, left, right)


__all__ = ["TIMESTEP_KINDS", "TimestepConfig", "draw_timesteps"]
