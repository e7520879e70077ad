"""The channel order of the inpainting UNet's input.

Stable Diffusion's inpainting UNet (original and diffusers) reads ``[z (4), mask (1), masked-image latent (4)]``;
ldmkit's masked_image concat route gives ``[masked-image latent (c), mask (1)]`` after ``z``. The conversion
permutes the input columns of ``conv_in``, which gives the same function with ldmkit's order.
"""

from __future__ import annotations

import torch

from ldmkit.conditioning.config import ConcatConfig


def concat_route(kind: str) -> ConcatConfig:
    """The concat route of a converted model's kind name, asked by its predicates (``inpainting``,
    ``super_resolution``) rather than compared as a string outside conditioning/."""
    return ConcatConfig(kind=kind)


def _order(latent: int) -> list[int]:
    """For each ldmkit input channel, the foreign channel it reads: [z, masked, mask] from [z, mask, masked]."""
    z = list(range(latent))
    return z + [latent + 1 + i for i in range(latent)] + [latent]


def conv_in_to_ldmkit(weight: torch.Tensor, latent: int) -> torch.Tensor:
    """conv_in weight [C_out, 2c + 1, 3, 3] in the foreign input order → ldmkit's order."""
    return weight[:, _order(latent)].contiguous()


def conv_in_from_ldmkit(weight: torch.Tensor, latent: int) -> torch.Tensor:
    inverse = torch.argsort(torch.tensor(_order(latent)))
    return weight[:, inverse].contiguous()
