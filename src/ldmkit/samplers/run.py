"""The one entry point that turns options, a denoiser and noise into latents."""

from __future__ import annotations

import torch

from ldmkit.conditioning.types import Conditioning
from ldmkit.config.checks import check_seed
from ldmkit.denoisers.wrapper import Denoiser
from ldmkit.errors import ConfigError
from ldmkit.samplers.common import Callback, LadderModel
from ldmkit.samplers.guidance import check_guidance
from ldmkit.samplers.options import SamplerOptions


@torch.no_grad()
def sample(options: SamplerOptions, denoiser: Denoiser, noise: torch.Tensor, cond: Conditioning | None = None,
           uncond: Conditioning | None = None, *, start: torch.Tensor | None = None,
           callback: Callback | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Latents [B, C, h, w] sampled from ``noise`` [B, C, h, w] as ``options`` say.

    ``cond`` / ``uncond``: the condition and the null (or negative) condition of classifier-free guidance
    (batch 1 or B). ``start``: img2img latents [B, C, h, w], noised to where the last
    ⌊steps · strength⌋ steps of the ladder begin. ``callback(step)`` runs after each step and may return a
    replacement ``x`` or raise :class:`~ldmkit.samplers.common.SamplingCancelled`. ``generator`` draws the
    noise of stochastic samplers (default: one seeded with ``options.seed``).
    """
    check_guidance(cond, uncond, options.guidance, options.guidance_rescale)
    if start is None and options.strength != 1.0:
        raise ConfigError(f"strength {options.strength} applies to img2img only; pass start latents or use "
                          "strength 1")
    if start is not None and start.shape != noise.shape:
        raise ConfigError(f"start latents {tuple(start.shape)} and noise {tuple(noise.shape)} differ in shape")
    ladder = options.ladder(denoiser.schedule)
    model = LadderModel(options, denoiser, ladder, noise, cond, uncond)
    if start is None:
        x = noise  # pure noise stands for x_T
    else:  # img2img (SDEdit): the start latents noised to the first level of the shortened ladder
        x = denoiser.schedule.add_noise(start.to(noise.dtype), noise, model.timesteps[0].expand(noise.shape[0]))
    if generator is None:
        generator = torch.Generator().manual_seed(check_seed(options.seed))
    extra = {"eta": options.eta} if options.spec.eta else {}
    return options.spec.function(model, x, ladder, callback=callback, generator=generator, **extra)


__all__ = ["sample"]
