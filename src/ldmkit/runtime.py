"""Where code runs: device choice, process rank and seeding (no "cuda" literals elsewhere)."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from ldmkit.errors import ConfigError


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` takes the accelerator of this process's local rank if there is one, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device(torch.cuda.current_device() if torch.cuda.is_initialized() else local_rank()
                                % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device '{name}' is not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' was asked for but this machine has no CUDA device; use device=cpu")
    return device


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank() == 0


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) from one number."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (``bf16``, ``fp16``, ``fp32``, ``auto``) on ``device``."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision in ("bf16", "auto"):
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    raise ConfigError(f"precision '{precision}' is not one of auto, bf16, fp16, fp32")
