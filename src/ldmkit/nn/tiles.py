"""Overlapping tiles of a 2-D grid and the blend of their results (MultiDiffusion-style, Bar-Tal et al. 2023).

What makes outputs larger than memory allows: a network (the UNet on latent tiles, the first stage's decoder
on pixel tiles) runs tile by tile, and neighbouring results are blended with linear ramps across their
overlap, so no seam shows where one tile ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

from ldmkit.errors import ConfigError


class Tile(NamedTuple):
    """A tile of a latent grid and its overlaps with the neighbouring tiles (all in latent cells)."""

    top: int
    left: int
    height: int
    width: int
    overlap_top: int
    overlap_bottom: int
    overlap_left: int
    overlap_right: int

    def region(self, scale: int = 1) -> tuple[slice, slice]:
        """(rows, columns) of this tile on a grid ``scale`` times finer (pixels: scale = f)."""
        return (slice(self.top * scale, (self.top + self.height) * scale),
                slice(self.left * scale, (self.left + self.width) * scale))

    def weight(self, scale: int = 1, device: torch.device | str | None = None) -> torch.Tensor:
        """[1, 1, height·scale, width·scale] blending weights: 1 inside, a linear ramp across each overlap.

        Two neighbours' ramps over their shared overlap sum to 1; every weight is positive.
        """
        rows = _ramp(self.height * scale, self.overlap_top * scale, self.overlap_bottom * scale, device)
        cols = _ramp(self.width * scale, self.overlap_left * scale, self.overlap_right * scale, device)
        return (rows[:, None] * cols[None, :])[None, None]


def _ramp(size: int, rise: int, fall: int, device: torch.device | str | None) -> torch.Tensor:
    """[size] weights rising linearly over the first ``rise`` cells and falling over the last ``fall``."""
    centres = torch.arange(size, device=device, dtype=torch.float32) + 0.5
    weights = torch.ones(size, device=device)
    if rise:
        weights = torch.minimum(weights, centres / rise)
    if fall:
        weights = torch.minimum(weights, (size - centres) / fall)
    return weights


def _axis(length: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(start, size, overlap before, overlap after) of evenly spread tiles covering ``length`` cells."""
    if length <= tile:
        return [(0, length, 0, 0)]
    count = math.ceil((length - overlap) / (tile - overlap))  # every overlap is at least ``overlap`` (± rounding)
    starts = [round(i * (length - tile) / (count - 1)) for i in range(count)]
    return [(s, tile, starts[i - 1] + tile - s if i else 0, s + tile - starts[i + 1] if i + 1 < count else 0)
            for i, s in enumerate(starts)]


@dataclass(frozen=True)
class TileGrid:
    """Overlapping tiles of at most ``tile`` cells covering a ``height × width`` latent grid."""

    height: int
    width: int
    tile: tuple[int, int]
    overlap: int

    def __post_init__(self) -> None:
        if min(self.tile) < 1 or not 0 <= self.overlap < min(self.tile):
            raise ConfigError(f"tile overlap must be in [0, tile size {min(self.tile)}); got {self.overlap}")

    def tiles(self) -> list[Tile]:
        rows = _axis(self.height, self.tile[0], self.overlap)
        cols = _axis(self.width, self.tile[1], self.overlap)
        return [Tile(top, left, h, w, up, down, before, after)
                for top, h, up, down in rows for left, w, before, after in cols]

    def blend(self, fn: Callable[[torch.Tensor], torch.Tensor], source: torch.Tensor, *, in_scale: int = 1,
              out_scale: int = 1, out_channels: int) -> torch.Tensor:
        """``fn`` applied tile by tile to ``source`` and the overlapping results blended.

        ``source`` [B, C, height·in_scale, width·in_scale] → [B, out_channels, height·out_scale, width·out_scale]
        (decoding: in_scale 1, out_scale f; encoding: in_scale f, out_scale 1).
        """
        batch = source.shape[0]
        out = torch.zeros(batch, out_channels, self.height * out_scale, self.width * out_scale,
                          device=source.device)
        total = torch.zeros(1, 1, *out.shape[-2:], device=source.device)
        for tile in self.tiles():
            rows, cols = tile.region(in_scale)
            piece = fn(source[..., rows, cols]).float()  # [B, out_channels, h·out_scale, w·out_scale]
            weight = tile.weight(out_scale, source.device)
            rows, cols = tile.region(out_scale)
            out[..., rows, cols] += piece.to(out.device) * weight
            total[..., rows, cols] += weight
        return out / total


__all__ = ["Tile", "TileGrid"]
