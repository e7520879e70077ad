"""The diffusion training objective (paper eq. 1–2; Ho et al. 2020, eq. 14) and its weightings.

``L = E_{x0, ε, t} [ w(t) · ‖target - network(x_t, t, c)‖² ]`` with t uniform over the T timesteps,
x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε, and the target given by the parameterisation (eps, x0 or v).

Options (each off by default, which is the objective above):

- ``timesteps``: another density p(t) (:mod:`ldmkit.diffusion.timestep_sampling`);
- ``offset_noise`` δ: ε ← ε + δ·η, η ~ N(0, I) of shape [B, C, 1, 1], one shift per sample and channel
  (Guttenberg 2023, "Diffusion with offset noise"), so the model learns to change an image's mean brightness;
- ``multires_noise_levels`` N, ``multires_noise_discount`` d: multi-resolution noise, ε plus N coarser noise
  fields at weights d^i, rescaled to unit variance (:mod:`ldmkit.diffusion.multires_noise`); before the offset;
- ``input_perturbation`` γ: x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t)(ε + γξ), ξ ~ N(0, I), while the target keeps ε
  (Ning et al. 2023, "Input Perturbation Reduces Exposure Bias in Diffusion Models", §4), γ = 0.1 there;
- ``loss``: ``mse`` d², ``l1`` |d|, or ``huber``, the pseudo-Huber 2δ(sqrt(d² + δ²) - δ) per element (Charbonnier;
  Song & Dhariwal 2023, §3.3), which is d² for |d| ≪ δ and 2δ|d| for |d| ≫ δ, so outliers weigh linearly;
- ``mask`` [B, 1, H, W] in [0, 1]: a per-pixel weight, resized to the latent grid by area averaging; each
  sample's loss is the mean over its masked latent pixels (a sample with an empty mask contributes 0).

Weightings (applied to whichever ``loss``):

- ``simple``: w = 1 (Ho et al.'s L_simple; what LDM trains with);
- ``min_snr``: Min-SNR-γ (Hang et al. 2023, eq. 9). In x0 terms the weight is min(SNR, γ) with
  SNR = ᾱ/(1-ᾱ); since ‖ε - ε̂‖² = SNR ‖x0 - x̂0‖² and ‖v - v̂‖² = (SNR + 1) ‖x0 - x̂0‖², the weight on
  the network's own error is min(SNR, γ)/SNR for eps, min(SNR, γ) for x0, min(SNR, γ)/(SNR + 1) for v, and
  min(SNR, γ) s² for the flow velocity (s = 1/(1 + sqrt(SNR)), the flow time).
"""

from __future__ import annotations

from typing import Any

import torch

from ldmkit.conditioning.types import Conditioning
from ldmkit.diffusion.parameterisation import network_input, target as prediction_target
from ldmkit.diffusion.multires_noise import multires_noise
from ldmkit.diffusion.noise import randint, randn
from ldmkit.diffusion.schedules import NoiseSchedule, broadcast_per_sample
from ldmkit.diffusion.timestep_sampling import TimestepConfig, draw_timesteps
from ldmkit.errors import ConfigError

WEIGHTINGS = ("simple", "min_snr")
LOSSES = ("mse", "huber", "l1")


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
    if prediction == "flow":  # x0 - x̂0 = -s (u - û), s = 1 / (1 + sqrt(SNR))
        return clipped / (1 + snr_values.sqrt()) ** 2
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


def elementwise_loss(output: torch.Tensor, target: torch.Tensor, kind: str = "mse",
                     huber_delta: float = 0.1) -> torch.Tensor:
    """The per-element loss of ``kind`` between ``output`` and ``target`` (same shape, float32)."""
    diff = output.float() - target
    if kind == "mse":
        return diff.pow(2)
    if kind == "l1":
        return diff.abs()
    if kind == "huber":
        if huber_delta <= 0:
            raise ConfigError(f"huber_delta must be positive; got {huber_delta}")
        # 2δ(sqrt(d² + δ²) - δ), written as 2δd² / (sqrt(d² + δ²) + δ): no cancellation for small d
        square = diff.pow(2)
        return 2 * huber_delta * square / ((square + huber_delta**2).sqrt() + huber_delta)
    raise ConfigError(f"unknown loss '{kind}'; use one of {', '.join(LOSSES)}")


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Per-sample mean [B] of ``values`` [B, C, h, w]; with ``mask`` [B, 1, H, W] the mask-weighted mean, the mask
    first area-averaged onto the h×w grid."""
    if mask is None:
        return values.flatten(1).mean(dim=1)
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] != values.shape[0]:
        raise ValueError(f"a loss mask must be [B, 1, H, W] for B = {values.shape[0]}; got {tuple(mask.shape)}")
    weights = torch.nn.functional.interpolate(mask.float(), size=values.shape[-2:], mode="area")  # [B, 1, h, w]
    total = (weights * values).flatten(1).sum(dim=1)
    return total / (weights.flatten(1).sum(dim=1) * values.shape[1]).clamp(min=1e-8)


def diffusion_loss(network: Any, x0: torch.Tensor, cond: Conditioning | None, schedule: NoiseSchedule, *,
                   weighting: str = "simple", min_snr_gamma: float = 5.0, generator: torch.Generator | None = None,
                   noise: torch.Tensor | None = None, t: torch.Tensor | None = None,
                   timesteps: TimestepConfig | None = None, offset_noise: float = 0.0,
                   multires_noise_levels: int = 0, multires_noise_discount: float = 0.3,
                   input_perturbation: float = 0.0, loss: str = "mse", huber_delta: float = 0.1,
                   mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted denoising loss on a batch of clean latents ``x0`` [B, C, h, w].

    ``network(x_t, t, cond)`` predicts ``schedule.prediction``. ``noise`` and ``t`` default to fresh
    draws (from ``generator`` when given; ``t`` from ``timesteps``, uniform when None; fresh noise gets the
    ``offset_noise`` and multi-resolution levels, given noise is used as it is). Returns the scalar loss (the
    batch mean of the weighted per-sample losses) and an info dict: ``t`` [B], ``per_sample`` [B] (the unweighted, masked mean of the
    element loss), ``weights`` [B], ``x_t``, ``target`` and ``noise`` (what the target was built from).
    """
    batch = x0.shape[0]
    if t is None:
        t = (sample_timesteps(batch, schedule, device=x0.device, generator=generator) if timesteps is None
             else draw_timesteps(batch, schedule, timesteps, device=x0.device, generator=generator))
    t = t.to(x0.device)
    if noise is None:
        noise = randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        noise = multires_noise(noise, multires_noise_levels, multires_noise_discount, generator)  # 0: no draws
        if offset_noise:  # one extra draw only when asked, so the default keeps its random stream
            shift = randn((batch, x0.shape[1], 1, 1), device=x0.device, dtype=x0.dtype, generator=generator)
            noise = noise + offset_noise * shift
    noised_with = noise
    if input_perturbation:
        xi = randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        noised_with = noise + input_perturbation * xi  # the input is perturbed, the target (from noise) is not
    x_t = schedule.add_noise(x0, noised_with, t)  # [B, C, h, w]
    alpha_bar = broadcast_per_sample(schedule.alpha_bar(t, dtype=torch.float32), x0)
    goal = prediction_target(schedule.prediction, x0.float(), noise.float(), alpha_bar)
    output = network(network_input(schedule.prediction, x_t, alpha_bar.to(x_t.dtype)), t, cond)  # [B, C, h, w]
    per_sample = masked_mean(elementwise_loss(output, goal, loss, huber_delta), mask)  # [B]
    weights = loss_weights(schedule, t, weighting, min_snr_gamma)
    total = (weights * per_sample).mean()
    return total, {"t": t, "per_sample": per_sample.detach(), "weights": weights, "x_t": x_t, "target": goal,
                   "noise": noise}
