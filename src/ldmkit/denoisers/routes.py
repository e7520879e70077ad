"""The conditioning routes a denoising network takes, checked against its config in one place.

Every backbone reads the same :class:`~ldmkit.conditioning.types.Conditioning`: context tokens for
cross-attention, a vector added to the timestep embedding, and image-like conditions concatenated to its
input. A mismatch between what the conditioner gives and what the network was built for is a one-line
ConfigError naming the route and the config key to set.
"""

from __future__ import annotations

from typing import Any

import torch

from ldmkit.conditioning.types import Conditioning
from ldmkit.errors import ConfigError


def network_inputs(config: Any, x: torch.Tensor, cond: Conditioning,
                   network: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(input with the concat route appended [B, C + C_cat, h, w], vector [B, V] or None) for a network whose
    ``config`` has ``in_channels``, ``downsample_factor``, ``context_dim``, ``vector_dim``, ``concat_channels``."""
    c = config
    size = c.downsample_factor
    if x.ndim != 4 or x.shape[1] != c.in_channels:
        raise ConfigError(f"{network} input must be [B, {c.in_channels}, h, w]; got {list(x.shape)}")
    if x.shape[-2] % size or x.shape[-1] % size:
        raise ConfigError(f"{network} input size {x.shape[-2]}x{x.shape[-1]} is not a multiple of {size} "
                          f"(its downsampling); crop or pad the latent")
    if c.context_dim is None and cond.context is not None:
        raise ConfigError(f"conditioning has context tokens but this {network} has no cross-attention; "
                          "set context_dim")
    if c.context_dim is not None:
        if cond.context is None:
            raise ConfigError(f"this {network} cross-attends to {c.context_dim}-wide context tokens; "
                              "the conditioning has none (use the encoder's empty/null tokens)")
        if cond.context.ndim != 3 or cond.context.shape[-1] != c.context_dim:
            raise ConfigError(f"conditioning context must be [B, T, {c.context_dim}]; got {list(cond.context.shape)}")
    if c.vector_dim is None and cond.vector is not None:
        raise ConfigError(f"conditioning has a vector but this {network} has no vector route; set vector_dim")
    if c.vector_dim is not None and (cond.vector is None or cond.vector.shape[-1] != c.vector_dim):
        got = "none" if cond.vector is None else str(list(cond.vector.shape))
        raise ConfigError(f"this {network} needs a conditioning vector [B, {c.vector_dim}]; got {got}")
    takes_guidance = getattr(c, "guidance_embed", False)
    if takes_guidance and (cond.guidance is None or cond.guidance.shape != (x.shape[0],)):
        got = "none" if cond.guidance is None else str(list(cond.guidance.shape))
        raise ConfigError(f"this {network} is guidance-distilled: it needs the guidance scale per sample "
                          f"[{x.shape[0]}] in Conditioning.guidance; got {got}")
    if not takes_guidance and cond.guidance is not None:
        raise ConfigError(f"conditioning has a guidance scale but this {network} has no guidance embedding; "
                          "set guidance_embed (a distilled student) or sample with classifier-free guidance")
    takes_sizes = getattr(c, "size_embed", False)
    if takes_sizes and (cond.sizes is None or cond.sizes.shape != (x.shape[0], 6)):
        got = "none" if cond.sizes is None else str(list(cond.sizes.shape))
        raise ConfigError(f"this {network} is size-conditioned: it needs Conditioning.sizes [{x.shape[0]}, 6] "
                          f"(original size, crop corner, output size); got {got}")
    if not takes_sizes and cond.sizes is not None:
        raise ConfigError(f"conditioning has sizes but this {network} has no size embedding; set size_embed")
    if c.concat_channels == 0:
        if cond.concat is not None:
            raise ConfigError(f"conditioning has a concat image but this {network} has no concat route; "
                              "set concat_channels")
        return x, cond.vector
    if cond.concat is None or cond.concat.shape[1] != c.concat_channels or cond.concat.shape[-2:] != x.shape[-2:]:
        got = "none" if cond.concat is None else str(list(cond.concat.shape))
        raise ConfigError(f"this {network} needs a concat condition [B, {c.concat_channels}, "
                          f"{x.shape[-2]}, {x.shape[-1]}]; got {got}")
    return torch.cat([x, cond.concat.to(x.dtype)], dim=1), cond.vector


__all__ = ["network_inputs"]
