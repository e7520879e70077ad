"""DDIM (Song, Meng & Ermon 2021, eq. 12): deterministic at eta = 0, DDPM-like at eta = 1."""

from __future__ import annotations

import math

import torch

from ldmkit.conditioning.types import Conditioning
from ldmkit.denoisers.wrapper import Denoiser
from ldmkit.errors import ConfigError
from ldmkit.samplers.common import Callback, prepare
from ldmkit.samplers.registry import SAMPLERS


@SAMPLERS.register("ddim")
@torch.no_grad()
def ddim(denoiser: Denoiser, noise: torch.Tensor, cond: Conditioning | None = None, *, steps: int = 50,
         uncond: Conditioning | None = None, guidance: float = 1.0, guidance_rescale: float = 0.0,
         spacing: str | None = None, eta: float = 0.0, start: torch.Tensor | None = None, strength: float = 1.0,
         callback: Callback | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample latents [B, C, h, w] from ``noise`` [B, C, h, w] (the signature every sampler shares).

    Arguments shared by all samplers:
        denoiser: the network wrapped with its schedule (:class:`~ldmkit.denoisers.wrapper.Denoiser`).
        noise: standard normal latents; the starting x_T, or (img2img) the noise added to ``start``.
        cond / uncond: the condition and the null (or negative) condition for classifier-free guidance.
        steps: number of steps of the full ladder (img2img runs ⌊steps · strength⌋ of them).
        guidance: guidance scale s (1 = no guidance, a single forward pass per evaluation).
        guidance_rescale: φ of Lin et al. 2023 (0 = off).
        spacing: "leading", "trailing", "linspace" or "karras"; None takes the sampler's default.
        eta: stochasticity, for samplers that have it (DDIM); others require 0.
        start, strength: img2img — start from ``start`` latents noised to the timestep where the
            last ⌊steps · strength⌋ steps begin; strength 1 starts from (almost) pure noise.
        callback: ``callback(i, total, x, x0)`` after each step; may return a replacement x or raise
            (:class:`~ldmkit.samplers.common.SamplingCancelled`) to stop.
        generator: seeds every random draw (same seed → same samples).
    Default spacing: trailing.
    """
    if eta < 0:
        raise ConfigError(f"eta must be at least 0; got {eta}")
    run = prepare(denoiser, noise, cond, steps=steps, uncond=uncond, guidance=guidance,
                  guidance_rescale=guidance_rescale, spacing=spacing, default_spacing="trailing", start=start,
                  strength=strength, callback=callback, generator=generator)
    x = run.x
    ab = run.ladder.alpha_bars
    for i in range(len(run)):
        pred = run.predict(x, i)
        a_t, a_s = ab[i], ab[i + 1]
        # σ_t(η) of eq. 16: η · sqrt((1 - ᾱ_s)/(1 - ᾱ_t)) · sqrt(1 - ᾱ_t/ᾱ_s).
        sigma = eta * math.sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s))
        x = math.sqrt(a_s) * pred.x0 + math.sqrt(max(1 - a_s - sigma**2, 0.0)) * pred.eps  # [B, C, h, w]
        if sigma > 0:
            x = x + sigma * run.randn_like(x)
        x = run.end_step(i, x, pred.x0)
    return x
