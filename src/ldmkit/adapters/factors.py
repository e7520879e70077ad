"""One low-rank update ``ΔW = (α / r) · B · A`` per adapted layer (Hu et al. 2021, LoRA), in ldmkit's names.

An :data:`Adapter` maps a module path of the model (``unet.down.1.1.blocks.0.attn1.to_qkv``,
``conditioner.encoder.blocks.0.qkv``) to its :class:`LoraFactor`. Every file layout is read into this form and
written from it, so layouts only rename and split; the arithmetic lives here once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class LoraFactor:
    """``down`` = A [r, in] (linear) or [r, in, kh, kw] (convolution), ``up`` = B [out, r] or [out, r, 1, 1]."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.alpha):
            raise ValueError(f"a LoRA alpha must be finite; got {self.alpha}")

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def delta(self, weight_shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        """``(α / r) · B · A`` in the shape of the adapted weight (float32)."""
        down = self.down.float().flatten(1)  # [r, in·kh·kw]
        up = self.up.float().flatten(1)  # [out, r]
        return (self.scaling * up @ down).reshape(weight_shape)


Adapter = dict[str, LoraFactor]


def as_module_shape(factor: LoraFactor, module: torch.nn.Module) -> LoraFactor:
    """``factor`` shaped for ``module``: a linear factor on a 1×1 convolution gains two unit dimensions, a 1×1
    convolution factor on a linear layer loses them (diffusers uses linear layers where ldmkit has 1×1 convs)."""
    if isinstance(module, torch.nn.Conv2d):
        down = factor.down if factor.down.ndim == 4 else factor.down[:, :, None, None]
        up = factor.up if factor.up.ndim == 4 else factor.up[:, :, None, None]
    else:
        down = factor.down.flatten(1) if factor.down.ndim == 4 and factor.down.shape[2:] == (1, 1) else factor.down
        up = factor.up.flatten(1)
    return LoraFactor(down, up, factor.alpha)


__all__ = ["Adapter", "LoraFactor", "as_module_shape"]
