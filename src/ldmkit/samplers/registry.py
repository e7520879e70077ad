"""Name → sampler function (DESIGN habit 3: one signature, one algorithm per file)."""

from __future__ import annotations

from typing import Callable

import torch

from ldmkit.config import Registry

Sampler = Callable[..., torch.Tensor]

SAMPLERS: Registry[Sampler] = Registry("sampler")
