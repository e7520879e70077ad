"""The training step both sides are timed with: bf16 autocast, ε-MSE loss on random data, fused AdamW.

Random data (fixed across steps) keeps the data pipeline out of the measurement; the step is the
paper's eq. 1 objective ``‖ε − ε_θ(z_t, t, c)‖²`` with z_t, ε, t and c drawn once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F

from ldmkit.denoisers.unet_config import UNetConfig
from measure import first_call, median_seconds, peak_memory_gb
from profile_step import profile_steps

UNetCall = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def adamw(params: Iterable[torch.nn.Parameter], device: torch.device) -> torch.optim.Optimizer:
    """AdamW with the fused (single-kernel) update where this torch build has it for ``device``."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=1e-4, fused=True)
    except RuntimeError:
        return torch.optim.AdamW(params, lr=1e-4)


def make_train_step(call: UNetCall, params: Iterable[torch.nn.Parameter], cfg: UNetConfig, size: int, batch: int,
                    tokens: int, device: torch.device, *, channels_last: bool) -> Callable[[], None]:
    """A closure running one optimiser step of ``call`` on a batch of ``batch`` latents of ``size``²."""
    optimizer = adamw(params, device)
    format = torch.channels_last if channels_last else torch.contiguous_format
    z_t = torch.randn(batch, cfg.in_channels, size, size, device=device).to(memory_format=format)
    eps = torch.randn_like(z_t)
    t = torch.randint(0, 1000, (batch,), device=device)
    context = torch.randn(batch, tokens, cfg.context_dim, device=device) if cfg.context_dim else None

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            prediction = call(z_t, t, context)  # [B, C, h, w]
        loss = F.mse_loss(prediction.float(), eps)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def time_train_step(step: Callable[[], None], batch: int, device: torch.device, *, compiled: bool, warmup: int,
                    iters: int, profile: bool = False, profile_steps_n: int = 3,
                    origins: bool = False) -> dict[str, Any]:
    """Compile time (first call, when ``compiled``), median step time, img/s and peak memory of ``step``; with
    ``profile``, the kernel profile of ``profile_steps_n`` more (warm) steps, and with ``origins`` where its
    copies come from."""
    out: dict[str, Any] = {"batch": batch}
    out.update(first_call(step, device, compiled=compiled))  # the peak below leaves out its one-off allocations
    seconds = median_seconds(step, device, warmup=warmup, iters=iters)
    out.update(img_s=batch / seconds, step_ms=seconds * 1e3, peak_mem_gb=peak_memory_gb(device))
    if profile:  # the same warm (compiled) step: costs a few steps, no compile
        out["profile"] = profile_steps(step, device, steps=profile_steps_n, warmup=1, origins=origins)
    return out
