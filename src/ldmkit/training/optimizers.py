"""The trainers' Adam-type optimisers (``train.optimizer``), in full precision or with 8-bit states.

``adamw8bit`` is bitsandbytes' block-wise 8-bit Adam(W) (Dettmers et al. 2022, "8-bit Optimizers via Block-wise
Quantization"): both moments are kept in 8 bits with a float scale per block of 2048 values, 2 bytes per
parameter instead of 8, with the same updates to within quantisation error (small tensors, under 4096 values,
keep 32-bit states). Its kernels run on CUDA GPUs; it is an optional extra (``pip install "ldmkit[bnb]"``).

``prodigy`` is Prodigy (Mishchenko & Defazio 2024, "Prodigy: An Expeditiously Adaptive Parameter-Free Learner"):
Adam whose step size d is estimated as training goes, from the distance travelled and the gradients, so no
learning rate needs tuning. ``train.lr`` then multiplies d and belongs near 1 (a typical Adam rate such as 1e-4
would leave the weights almost still: refused). As LoRA and fine-tuning users run it in sd-scripts: bias
correction on, and the warm-up safeguard, which keeps a warm-up's small rates from inflating d. Under FSDP every
rank's shard enters one d (``fsdp_in_use``). An optional extra too (``pip install "ldmkit[prodigy]"``), on any device.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ldmkit.errors import ConfigError

OPTIMIZERS = ("adamw", "adamw8bit", "prodigy")
#: Smallest train.lr Prodigy takes: it multiplies the estimated step size.
PRODIGY_MIN_LR = 0.1


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
    if kind == "prodigy":
        return _prodigy(params, lr=lr, betas=betas, weight_decay=weight_decay, decoupled=decoupled, sharded=sharded)
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


def _prodigy(params: list[torch.nn.Parameter], *, lr: float, betas: tuple[float, float], weight_decay: float,
             decoupled: bool, sharded: bool) -> torch.optim.Optimizer:
    if lr < PRODIGY_MIN_LR:
        raise ConfigError(f"train.optimizer=prodigy estimates the step size itself and train.lr={lr:g} multiplies it: "
                          "set train.lr=1.0 (0.5 to 1 are usual)")
    try:
        from prodigyopt import Prodigy
    except ImportError:
        raise ConfigError('train.optimizer=prodigy needs prodigyopt: pip install "ldmkit[prodigy]"') from None
    return Prodigy(params, lr=lr, betas=betas, weight_decay=weight_decay, decouple=decoupled,
                   use_bias_correction=True, safeguard_warmup=True, fsdp_in_use=sharded)


__all__ = ["OPTIMIZERS", "PRODIGY_MIN_LR", "build_optimizer"]
