"""Checks of a pipeline call's values, made before anything is sampled.

Every task (generation, img2img, inpainting, upscaling, semantic synthesis) calls :func:`check_request`
first, so the command line, the Python API and the web demo refuse the same values with the same one-line
:class:`~ldmkit.errors.ConfigError`. Seeds become generators only through :func:`seed_generator`.
"""

from __future__ import annotations

import torch

from ldmkit.config.checks import check_count, check_finite, check_seed
from ldmkit.errors import ConfigError

#: More steps than this only cost time (the karras ladder also allocates one entry per step).
MAX_STEPS = 10_000


def check_steps(steps: int) -> int:
    check_count("steps", steps)
    if steps > MAX_STEPS:
        raise ConfigError(f"steps must be at most {MAX_STEPS}; got {steps}")
    return steps


def check_sampling(*, steps: int = 25, guidance: float = 3.0, guidance_rescale: float = 0.0, eta: float = 0.0) -> None:
    """Refuse NaN or infinite sampler settings and step counts outside 1..MAX_STEPS."""
    check_steps(steps)
    check_finite("guidance", guidance)
    check_finite("guidance rescale", guidance_rescale)
    check_finite("eta", eta)


def check_images(*, count: int, batch_size: int, seed: int) -> None:
    """Refuse image and batch counts below 1 and seeds out of range (image i uses ``seed + i``)."""
    check_count("the number of images (n)", count)
    check_count("batch size", batch_size)
    check_seed(seed, count)


def check_request(*, count: int, batch_size: int, seed: int, steps: int, guidance: float,
                  guidance_rescale: float, eta: float) -> None:
    """Everything :func:`check_images` and :func:`check_sampling` refuse, before a task samples anything."""
    check_images(count=count, batch_size=batch_size, seed=seed)
    check_sampling(steps=steps, guidance=guidance, guidance_rescale=guidance_rescale, eta=eta)


def seed_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (a ConfigError when torch could not take the seed)."""
    return torch.Generator().manual_seed(check_seed(seed))


__all__ = ["MAX_STEPS", "check_images", "check_request", "check_sampling", "check_steps", "seed_generator"]
