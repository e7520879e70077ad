"""The trainers' Adam-type optimisers (``train.optimizer``), in full precision or with 8-bit states.

``adamw8bit`` is bitsandbytes' block-wise 8-bit Adam(W) (Dettmers et al. 2022, "8-bit Optimizers via Block-wise
Quantization"): both moments are kept in 8 bits with a float scale per block of 2048 values, 2 bytes per
parameter instead of 8, with the same updates to within quantisation error (small tensors, under 4096 values,
keep 32-bit states). Its kernels run on CUDA GPUs; it is an optional extra (``pip install "ldmkit[bnb]"``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ldmkit.errors import ConfigError

OPTIMIZERS = ("adamw", "adamw8bit")


def build_optimizer(kind: str, params: Iterable[torch.nn.Parameter], *, lr: float, betas: tuple[float, float],
                    weight_decay: float = 0.0, decoupled: bool = True, device: torch.device,
                    sharded: bool = False) -> torch.optim.Optimizer:
    """AdamW (``decoupled``) or Adam over ``params``; ``kind`` adamw8bit gives bitsandbytes' 8-bit version."""
    params = list(params)
    if kind == "adamw":
        if decoupled:
            return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas)
        extra = {"weight_decay": weight_decay} if weight_decay else {}
        return torch.optim.Adam(params, lr=lr, betas=betas, **extra)
    if kind != "adamw8bit":
        raise ConfigError(f"unknown optimiser '{kind}'; use one of {', '.join(OPTIMIZERS)}")
    if device.type != "cuda":
        raise ConfigError(f"train.optimizer=adamw8bit runs on CUDA GPUs only (bitsandbytes' 8-bit kernels), not on "
                          f"{device.type}: use train.optimizer=adamw there")
    if sharded:
        raise ConfigError("train.optimizer=adamw8bit cannot update sharded weights (train.parallel=fsdp): use "
                          "train.parallel=ddp, or train.optimizer=adamw")
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ConfigError('train.optimizer=adamw8bit needs bitsandbytes: pip install "ldmkit[bnb]" '
                          "(Linux or Windows with a CUDA GPU)") from None
    cls = bnb.optim.AdamW8bit if decoupled else bnb.optim.Adam8bit
    return cls(params, lr=lr, betas=betas, weight_decay=weight_decay)


__all__ = ["OPTIMIZERS", "build_optimizer"]
