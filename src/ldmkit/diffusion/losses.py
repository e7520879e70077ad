"""The diffusion training objective (paper eq. 1–2; Ho et al. 2020, eq. 14) and its weightings.

``L = E_{x0, ε, t} [ w(t) · ‖target - network(x_t, t, c)‖² ]`` with t uniform over the T timesteps,
x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε, and the target given by the parameterisation (eps, x0 or v).

Weightings:

- ``simple``: w = 1 (Ho et al.'s L_simple; what LDM trains with);
- ``min_snr``: Min-SNR-γ (Hang et al. 2023, eq. 9). In x0 terms the weight is min(SNR, γ) with
  SNR = ᾱ/(1-ᾱ); since ‖ε - ε̂‖² = SNR ‖x0 - x̂0‖² and ‖v - v̂‖² = (SNR + 1) ‖x0 - x̂0‖², the weight on
  the network's own error is min(SNR, γ)/SNR for eps, min(SNR, γ) for x0, min(SNR, γ)/(SNR + 1) for v.
"""

from __future__ import annotations

from typing import Any

import torch

from ldmkit.conditioning.types import Conditioning
from ldmkit.diffusion.parameterisation import target as prediction_target
from ldmkit.diffusion.noise import randint, randn
from ldmkit.diffusion.schedules import NoiseSchedule, broadcast_per_sample
from ldmkit.errors import ConfigError

WEIGHTINGS = ("simple", "min_snr")


def sample_timesteps(batch: int, schedule: NoiseSchedule, *, device: torch.device | str,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform integer timesteps in [0, T) of shape [batch] (int64)."""
    return randint(schedule.num_timesteps, (batch,), device=device, generator=generator)


def snr(schedule: NoiseSchedule, t: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ᾱ_t/(1 - ᾱ_t) at timesteps ``t`` (float32, on t's device; 0 at ᾱ = 0)."""
    alpha_bar = schedule.alpha_bar(t, dtype=torch.float32)
    return alpha_bar / (1 - alpha_bar)


def min_snr_weights(snr_values: torch.Tensor, prediction: str, gamma: float = 5.0) -> torch.Tensor:
    """Min-SNR-γ loss weights (Hang et al. 2023) for a network predicting ``prediction``."""
    clipped = snr_values.clamp(max=gamma)
    if prediction == "x0":
        return clipped
    if prediction == "eps":
        return (gamma / snr_values).clamp(max=1.0)  # = min(SNR, γ)/SNR, and 1 as SNR → 0
    if prediction == "v":
        return clipped / (snr_values + 1)
    raise ValueError(f"unknown prediction '{prediction}'")


def loss_weights(schedule: NoiseSchedule, t: torch.Tensor, weighting: str = "simple",
                 min_snr_gamma: float = 5.0) -> torch.Tensor:
    """Per-sample weights [B] of the chosen ``weighting`` at timesteps ``t``."""
    if weighting == "simple":
        return torch.ones(t.shape, device=t.device)
    if weighting == "min_snr":
        if min_snr_gamma <= 0:
            raise ConfigError(f"min_snr_gamma must be positive; got {min_snr_gamma}")
        return min_snr_weights(snr(schedule, t), schedule.prediction, min_snr_gamma)
    raise ConfigError(f"unknown loss weighting '{weighting}'; use one of {', '.join(WEIGHTINGS)}")


def diffusion_loss(network: Any, x0: torch.Tensor, cond: Conditioning | None, schedule: NoiseSchedule, *,
                   weighting: str = "simple", min_snr_gamma: float = 5.0, generator: torch.Generator | None = None,
                   noise: torch.Tensor | None = None,
                   t: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted denoising loss on a batch of clean latents ``x0`` [B, C, h, w].

    ``network(x_t, t, cond)`` predicts ``schedule.prediction``. ``noise`` and ``t`` default to fresh
    draws (from ``generator`` when given). Returns the scalar loss (the batch mean of the weighted
    per-sample losses) and an info dict: ``t`` [B], ``per_sample`` [B] (unweighted mean squared error),
    ``weights`` [B], ``x_t`` and ``target``.
    """
    batch = x0.shape[0]
    if t is None:
        t = sample_timesteps(batch, schedule, device=x0.device, generator=generator)
    t = t.to(x0.device)
    if noise is None:
        noise = randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    x_t = schedule.add_noise(x0, noise, t)  # [B, C, h, w]
    alpha_bar = broadcast_per_sample(schedule.alpha_bar(t, dtype=torch.float32), x0)
    goal = prediction_target(schedule.prediction, x0.float(), noise.float(), alpha_bar)
    output = network(x_t, t, cond)  # [B, C, h, w]
    per_sample = (output.float() - goal).pow(2).flatten(1).mean(dim=1)  # [B]
    weights = loss_weights(schedule, t, weighting, min_snr_gamma)
    loss = (weights * per_sample).mean()
    return loss, {"t": t, "per_sample": per_sample.detach(), "weights": weights, "x_t": x_t, "target": goal}
