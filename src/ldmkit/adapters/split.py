"""Splitting a fused ldmkit layer's factor into the foreign layers it stands for, and joining them back.

A fused projection W = [W_q; W_k; W_v] adapted by (A, B) is, row block by row block, W_i + s·B_i·A: each foreign
layer gets the same A and its rows of B. Foreign adapters (A_i, B_i, s_i) on the separate layers join exactly
into one factor of rank Σr_i: A = [A_1; A_2; …] and B block-diagonal with the blocks s_i·B_i (alpha = rank, so
the scaling is 1 and each block keeps its own). Layers an adapter leaves out get zero blocks.
"""

from __future__ import annotations

import torch

from ldmkit.adapters.factors import LoraFactor
from ldmkit.adapters.names import Place


def split(factor: LoraFactor, place: Place) -> list[tuple[str, LoraFactor]]:
    """(foreign layer, its factor) for each foreign layer of ``place``."""
    down = factor.down.flatten(1) if place.linear else factor.down
    ups = factor.up.chunk(len(place.foreign), dim=0)
    return [(name, LoraFactor(down.clone(), (up.flatten(1) if place.linear else up).contiguous(), factor.alpha))
            for name, up in zip(place.foreign, ups)]


def join(parts: dict[int, LoraFactor], place: Place) -> LoraFactor:
    """One factor for the ldmkit layer of ``place`` from the factors of some of its foreign layers (by index)."""
    if len(place.foreign) == 1:
        return parts[0]
    rows = next(iter(parts.values())).up.shape[0]
    downs, blocks = [], []
    for i in sorted(parts):
        downs.append(parts[i].down.float().flatten(1))
        blocks.append((i, parts[i].scaling * parts[i].up.float().flatten(1)))  # [rows, r_i]
    rank = sum(d.shape[0] for d in downs)
    up = torch.zeros(rows * len(place.foreign), rank)
    col = 0
    for i, block in blocks:
        up[i * rows:(i + 1) * rows, col:col + block.shape[1]] = block
        col += block.shape[1]
    kernel = next(iter(parts.values())).down.shape[2:]
    down = torch.cat(downs).reshape(rank, -1, *kernel)
    return LoraFactor(down, up, float(rank))


__all__ = ["join", "split"]
