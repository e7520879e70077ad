"""Random training masks for the inpainting model (paper §4.5), in the manner of LaMa.

Suvorov et al. 2022 ("Resolution-robust Large Mask Inpainting with Fourier Convolutions", §3, "Mask
generation during training") train on large, varied masks: thick and thin brush strokes (random polylines
drawn with a round brush of random width) and boxes. Each mask here is one of four kinds, picked with
the configured weights:

- ``thick_strokes`` / ``thin_strokes``: polylines whose direction turns by a random angle at each vertex;
- ``large_boxes``: rectangles with both sides a sizeable part of the image;
- ``thin_boxes``: long, narrow rectangles, across or down.

A mask draws a target coverage uniformly from ``coverage`` and adds elements of its kind until the target
is reached; a mask that overshoots the upper bound is drawn again. Sizes are fractions of the image side,
so the same config suits any resolution. Random numbers come from a ``torch.Generator`` (or torch's
global generator), so masks are reproducible per seed; drawing is done on the CPU with PIL.
:func:`mask_from_seed` draws one mask from an integer seed: the data pipeline uses it to draw each item's
mask in the data-loader workers (:mod:`ldmkit.data.masked`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
from PIL import Image, ImageDraw

from ldmkit.config import option
from ldmkit.errors import ConfigError

#: The kinds of mask, in the order of their weights in :class:`MaskConfig`.
MASK_KINDS: tuple[str, ...] = ("thick_strokes", "thin_strokes", "large_boxes", "thin_boxes")


@dataclass(frozen=True)
class MaskConfig:
    """How training masks are drawn (sizes are fractions of the image side; widths of the shorter side)."""

    thick_strokes: float = option(0.4, help="relative frequency of masks made of thick brush strokes", min=0.0)
    thin_strokes: float = option(0.2, help="relative frequency of masks made of thin brush strokes", min=0.0)
    large_boxes: float = option(0.25, help="relative frequency of masks made of large boxes", min=0.0)
    thin_boxes: float = option(0.15, help="relative frequency of masks made of long, narrow boxes", min=0.0)
    coverage: tuple[float, float] = option(
        (0.1, 0.6), help="range of the fraction of the image a mask covers: each mask draws a target in it and "
                         "adds elements until the target is reached", min=0.0, max=1.0)
    thick_width: tuple[float, float] = option((0.06, 0.16), help="brush width of thick strokes", min=0.0, max=1.0)
    thin_width: tuple[float, float] = option((0.015, 0.04), help="brush width of thin strokes (at least 1 pixel)",
                                             min=0.0, max=1.0)
    stroke_vertices: tuple[int, int] = option((4, 12), help="vertices of one stroke's polyline", min=2)
    stroke_step: tuple[float, float] = option((0.08, 0.3), help="length of each segment of a stroke", min=0.0,
                                              max=2.0)
    stroke_turn: float = option(70.0, help="largest turn of a stroke at a vertex, in degrees", min=0.0, max=180.0)
    box_side: tuple[float, float] = option((0.2, 0.6), help="sides of large boxes", min=0.0, max=1.0)
    thin_box_short: tuple[float, float] = option((0.04, 0.12), help="short side of thin boxes", min=0.0, max=1.0)
    thin_box_long: tuple[float, float] = option((0.4, 0.95), help="long side of thin boxes", min=0.0, max=1.0)
    max_elements: int = option(16, help="at most this many strokes or boxes in one mask", min=1)
    max_tries: int = option(10, help="redraws of a mask that overshoots the coverage range before one box of "
                                     "the target coverage is used instead", min=1)

    def __post_init__(self) -> None:
        if sum(self.weights) <= 0:
            raise ConfigError("concat.masks: at least one of " + ", ".join(MASK_KINDS) + " must be positive")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple) and value[0] > value[1]:
                raise ConfigError(f"concat.masks.{f.name}: the range {list(value)} is reversed; give [low, high]")
        if self.coverage[0] >= self.coverage[1]:
            raise ConfigError(f"concat.masks.coverage {list(self.coverage)} is empty; give [low, high] with low < high")

    @property
    def weights(self) -> tuple[float, ...]:
        """Relative frequencies of :data:`MASK_KINDS`."""
        return tuple(getattr(self, kind) for kind in MASK_KINDS)


class _Draws:
    """Uniform numbers from a torch generator (None: torch's global generator), as Python floats.

    Numbers are drawn ``POOL`` at a time (one call to the generator instead of one per number).
    """

    POOL = 256

    def __init__(self, generator: torch.Generator | None):
        self.generator = generator
        self.device = generator.device if generator is not None else torch.device("cpu")
        self.pool: list[float] = []

    def uniform(self, low: float, high: float, n: int = 1) -> list[float]:
        if len(self.pool) < n:
            self.pool += torch.rand(max(n, self.POOL), generator=self.generator, device=self.device).tolist()
        values, self.pool = self.pool[:n], self.pool[n:]
        return [low + (high - low) * v for v in values]

    def integer(self, low: int, high: int) -> int:
        """An integer in [low, high]."""
        return min(high, low + int(self.uniform(0.0, 1.0)[0] * (high - low + 1)))

    def choice(self, weights: tuple[float, ...]) -> int:
        total, u = sum(weights), self.uniform(0.0, 1.0)[0]
        edge = 0.0
        for i, w in enumerate(weights):
            edge += w / total
            if u < edge:
                return i
        return max(i for i, w in enumerate(weights) if w > 0)


def _stroke(draw: ImageDraw.ImageDraw, rng: _Draws, cfg: MaskConfig, height: int, width: int,
            widths: tuple[float, float]) -> None:
    """One random polyline drawn with a round brush (round joints, a disc at each end)."""
    side = min(height, width)
    brush_u, x_u, y_u, angle_u = rng.uniform(0.0, 1.0, n=4)
    brush = max(1, round((widths[0] + (widths[1] - widths[0]) * brush_u) * side))
    x, y, angle = x_u * width, y_u * height, angle_u * 2 * math.pi
    turn, (short, long) = math.radians(cfg.stroke_turn), cfg.stroke_step
    segments = rng.integer(*cfg.stroke_vertices) - 1
    draws = rng.uniform(0.0, 1.0, n=2 * segments)
    points = [(x, y)]
    for turn_u, step_u in zip(draws[0::2], draws[1::2]):
        angle += (2 * turn_u - 1) * turn
        step = (short + (long - short) * step_u) * side
        x = min(max(x + step * math.cos(angle), 0.0), width - 1.0)
        y = min(max(y + step * math.sin(angle), 0.0), height - 1.0)
        points.append((x, y))
    draw.line(points, fill=255, width=brush, joint="curve")
    r = (brush - 1) / 2
    for px, py in (points[0], points[-1]):
        draw.ellipse((px - r, py - r, px + r, py + r), fill=255)


def _box(draw: ImageDraw.ImageDraw, rng: _Draws, height: int, width: int, sides: tuple[float, float] | None,
         thin: tuple[tuple[float, float], tuple[float, float]] | None = None) -> None:
    """One axis-aligned rectangle at a random place (``sides``: both sides' range; ``thin``: short, long)."""
    if thin is not None:
        short, long = rng.uniform(*thin[0])[0], rng.uniform(*thin[1])[0]
        fh, fw = (short, long) if rng.uniform(0.0, 1.0)[0] < 0.5 else (long, short)
    else:
        fh, fw = rng.uniform(*sides, n=2)
    bh, bw = max(1, round(fh * height)), max(1, round(fw * width))
    top, left = int(rng.uniform(0, height - bh + 1)[0]), int(rng.uniform(0, width - bw + 1)[0])
    draw.rectangle((left, top, left + bw - 1, top + bh - 1), fill=255)


def _coverage(image: Image.Image) -> float:
    return image.histogram()[255] / (image.width * image.height)


def _draw_mask(height: int, width: int, config: MaskConfig, rng: _Draws) -> tuple[np.ndarray, str]:
    """One mask as uint8 ``[H, W]`` in {0, 1} and its kind."""
    low, high = config.coverage
    kind = MASK_KINDS[rng.choice(config.weights)]
    target = rng.uniform(low, high)[0]
    for _ in range(config.max_tries):
        image = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(image)
        for _ in range(config.max_elements):
            if kind == "thick_strokes":
                _stroke(draw, rng, config, height, width, config.thick_width)
            elif kind == "thin_strokes":
                _stroke(draw, rng, config, height, width, config.thin_width)
            elif kind == "large_boxes":
                _box(draw, rng, height, width, config.box_side)
            else:
                _box(draw, rng, height, width, None, (config.thin_box_short, config.thin_box_long))
            if _coverage(image) >= target:
                break
        if low <= _coverage(image) <= high:
            break
    else:  # every try overshot (or undershot): one box of the target coverage, which always fits the range
        kind = "large_boxes"
        image = Image.new("L", (width, height), 0)
        side = math.sqrt(target)
        _box(ImageDraw.Draw(image), rng, height, width, (side, side))
    return np.asarray(image) // 255, kind


def sample_mask(height: int, width: int, config: MaskConfig = MaskConfig(),
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, str]:
    """One training mask ``[H, W]`` float in {0, 1} (1 = fill in) and its kind (one of :data:`MASK_KINDS`)."""
    array, kind = _draw_mask(height, width, config, _Draws(generator))
    return torch.from_numpy(array).float(), kind  # [H, W]


def mask_from_seed(height: int, width: int, config: MaskConfig = MaskConfig(), seed: int = 0) -> torch.Tensor:
    """One training mask ``[H, W]`` float in {0, 1} (1 = fill in), a pure function of its arguments.

    ``seed`` is any integer in [0, 2**64); data pipelines derive one per item (see
    :func:`ldmkit.data.masked.item_mask_seed`) so a mask does not depend on which process draws it.
    """
    return sample_mask(height, width, config, torch.Generator().manual_seed(seed))[0]  # [H, W]


def random_masks(batch_size: int, height: int, width: int, config: MaskConfig = MaskConfig(),
                 generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """``[B, 1, H, W]`` float training masks in {0, 1} (1 = fill in), independent per sample."""
    rng = _Draws(generator)
    masks = np.stack([_draw_mask(height, width, config, rng)[0] for _ in range(batch_size)])  # [B, H, W] uint8
    return torch.from_numpy(masks[:, None]).to(device).float()  # [B, 1, H, W]; bytes cross to the device


__all__ = ["MASK_KINDS", "MaskConfig", "mask_from_seed", "random_masks", "sample_mask"]
