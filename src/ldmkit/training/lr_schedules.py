"""Learning-rate schedules: the factor on ``train.lr`` as a pure function of the update count.

``k`` counts the optimiser updates already made (0 for the first one), which is what
:class:`torch.optim.lr_scheduler.LambdaLR` passes; a resumed run restores ``k`` from its checkpoint, so the
schedule continues exactly. With ``W`` warm-up updates, ``S`` decay updates and ``r`` = ``train.lr_min_ratio``:

- ``constant``: 1;
- ``constant_with_warmup``: (k + 1) / W while k < W, then 1 (so update W - 1 is the first at the peak);
- ``linear``: the warm-up, then r + (1 - r)(1 - p) with progress p = (k - W) / (S - W), clamped to [0, 1];
- ``cosine``: the warm-up, then r + (1 - r) · ½(1 + cos πp) (Loshchilov & Hutter 2017, SGDR eq. 5, one cycle).

Decay starts at the peak (p = 0 at k = W) and reaches r at k = S, the first update past the schedule;
updates beyond S stay at r.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ldmkit.errors import ConfigError

LR_SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine")
DECAYING = ("linear", "cosine")


def lr_factor(kind: str, k: int, *, warmup: int = 0, total: int = 0, min_ratio: float = 0.0) -> float:
    """The multiple of the peak learning rate for update ``k`` (0-based) of schedule ``kind``."""
    if kind == "constant":
        return 1.0
    if kind not in LR_SCHEDULES:
        raise ConfigError(f"unknown learning-rate schedule '{kind}'; use one of {', '.join(LR_SCHEDULES)}")
    if k < warmup:
        return (k + 1) / warmup
    if kind == "constant_with_warmup":
        return 1.0
    progress = min(1.0, max(0.0, (k - warmup) / max(1, total - warmup)))
    decay = 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * decay


def check_schedule(kind: str, *, warmup: int, total: int) -> None:
    """One-line errors for a schedule that cannot run: a warm-up the schedule has not, or no room to decay."""
    if kind == "constant" and warmup:
        raise ConfigError(f"train.lr_schedule=constant has no warm-up but train.warmup_steps={warmup}: "
                          "set train.warmup_steps=0 or use train.lr_schedule=constant_with_warmup")
    if kind in DECAYING and total <= warmup:
        raise ConfigError(f"train.lr_schedule={kind} decays over {total} updates, which the "
                          f"train.warmup_steps={warmup} warm-up already takes: raise train.decay_steps "
                          "(or train.steps) above the warm-up")


def lr_scheduler(optimizer: torch.optim.Optimizer, kind: str, *, warmup: int, total: int,
                 min_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over :func:`lr_factor`; its state (the update count) is all a checkpoint needs to keep."""
    check_schedule(kind, warmup=warmup, total=total)
    factor: Callable[[int], float] = lambda k: lr_factor(kind, k, warmup=warmup, total=total,  # noqa: E731
                                                         min_ratio=min_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


__all__ = ["DECAYING", "LR_SCHEDULES", "check_schedule", "lr_factor", "lr_scheduler"]
