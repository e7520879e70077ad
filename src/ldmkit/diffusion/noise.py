"""Seeded random draws on any device.

A ``torch.Generator`` lives on one device; drawing with it elsewhere fails. These helpers draw on the
generator's device and move the result, so the same CPU generator gives the same numbers whatever
device the model runs on.
"""

from __future__ import annotations

import torch


def randn(shape: tuple[int, ...] | torch.Size, *, device: torch.device | str, dtype: torch.dtype = torch.float32,
          generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise of ``shape`` on ``device``, drawn from ``generator`` when given."""
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    return _move(torch.randn(shape, device=generator.device, dtype=dtype, generator=generator), device)


def rand(shape: tuple[int, ...] | torch.Size, *, device: torch.device | str, dtype: torch.dtype = torch.float32,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform numbers in [0, 1) of ``shape`` on ``device``, drawn from ``generator`` when given."""
    if generator is None:
        return torch.rand(shape, device=device, dtype=dtype)
    return _move(torch.rand(shape, device=generator.device, dtype=dtype, generator=generator), device)


def randint(high: int, shape: tuple[int, ...], *, device: torch.device | str,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform integers in [0, high) of ``shape`` (int64) on ``device``."""
    if generator is None:
        return torch.randint(high, shape, device=device)
    return _move(torch.randint(high, shape, device=generator.device, generator=generator), device)


def _move(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Copy to ``device``; from the CPU to an accelerator through pinned memory, so the host never waits."""
    device = torch.device(device)
    if tensor.device == device:
        return tensor
    if tensor.device.type == "cpu" and device.type != "cpu":
        try:
            tensor = tensor.pin_memory()
        except RuntimeError:  # no pinned memory on this backend: a plain copy
            return tensor.to(device)
        return tensor.to(device, non_blocking=True)
    return tensor.to(device)
