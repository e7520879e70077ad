"""Parameter initialisation helpers."""

from __future__ import annotations

import torch
from torch import nn



def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero and return it.

    Used on the last layer of residual branches (ADM, Dhariwal & Nichol 2021) so that a block is the
    identity at initialisation, and on the UNet's output convolution.
    """
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    return module
