"""Checks of a pipeline call's values, made before anything is sampled.

Every task (generation, img2img, inpainting, upscaling, semantic synthesis) turns its arguments into
:class:`~ldmkit.samplers.SamplerOptions` through :func:`request_options` first, so the command line, the
Python API and the web demo refuse the same values with the same one-line
:class:`~ldmkit.errors.ConfigError`. Seeds become generators only through :func:`seed_generator`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ldmkit.config.checks import check_count, check_seed
from ldmkit.samplers import SamplerOptions


def check_images(*, count: int, batch_size: int, seed: int) -> None:
    """Refuse image and batch counts below 1 and seeds out of range (image i uses ``seed + i``)."""
    check_count("the number of images (n)", count)
    check_count("batch size", batch_size)
    check_seed(seed, count)


def request_options(*, count: int, batch_size: int, seed: int, defaults: Mapping[str, Any] | None = None,
                    **sampling: Any) -> SamplerOptions:
    """The checked :class:`SamplerOptions` of a task call making ``count`` images in batches of ``batch_size``
    (image i from seed ``seed + i``); ``sampling`` are the option fields (sampler, steps, guidance, …), and a
    field left None comes from ``defaults`` (the model's ``sampling_defaults``), else from SamplerOptions."""
    check_images(count=count, batch_size=batch_size, seed=seed)
    for key, value in list(sampling.items()):
        if value is None and key != "spacing":  # None is a spacing of its own: the sampler's default
            if defaults and key in defaults:
                sampling[key] = defaults[key]
            else:
                del sampling[key]
    return SamplerOptions(seed=seed, **sampling)


def seed_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (a ConfigError when torch could not take the seed)."""
    return torch.Generator().manual_seed(check_seed(seed))


__all__ = ["check_images", "request_options", "seed_generator"]
