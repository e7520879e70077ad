"""Group normalisation that also fits the tiny channel counts of test models."""

from __future__ import annotations

from torch import nn


def num_groups(channels: int, groups: int = 32) -> int:
    """The largest divisor of ``channels`` that is at most ``groups`` (32 for 320 channels, 4 for 12)."""
    if channels < 1 or groups < 1:
        raise ValueError(f"channels ({channels}) and groups ({groups}) must be positive")
    for g in range(min(groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def group_norm(channels: int, groups: int = 32, eps: float = 1e-6) -> nn.GroupNorm:
    """``nn.GroupNorm`` over ``channels`` with the largest valid group count not above ``groups``."""
    return nn.GroupNorm(num_groups(channels, groups), channels, eps=eps, affine=True)
