"""Condition dropout for classifier-free guidance (Ho & Salimans, 2022).

During training each sample's condition is replaced by the null condition with probability ``p``, so one
network learns the conditional and the unconditional score; guidance mixes the two at sampling time.
"""

from __future__ import annotations

import torch

from ldmkit.errors import ConfigError


def sample_drop_mask(batch_size: int, p: float, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """A ``[batch_size]`` bool tensor, True (drop the condition) with probability ``p`` for each sample.

    The draw happens on the generator's device (the CPU when none is given) and the result is moved to
    ``device``, so a seeded CPU generator gives the same mask on any device.
    """
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"condition drop probability {p} is not in [0, 1]")
    if p == 0.0:
        return torch.zeros(batch_size, dtype=torch.bool, device=device)
    if p == 1.0:
        return torch.ones(batch_size, dtype=torch.bool, device=device)
    draw_device = generator.device if generator is not None else torch.device("cpu")
    mask = torch.rand(batch_size, generator=generator, device=draw_device) < p  # [B]
    return mask.to(device) if device is not None else mask
