"""Scenes of coloured shapes, drawn in code: the default data set (no download), for the demo and the tests.

Scene ``i`` is a pure function of ``(synthetic.seed, i)`` and can be drawn at any resolution. A scene has
1 to 4 non-overlapping objects (``min_objects``..``max_objects``), each a shape (circle, square, triangle,
star, diamond, hexagon, cross) of one colour and one size (small, medium, large), on a plain background
(white or a pale tint). Objects are drawn at ``supersample`` times the resolution and box-filtered down,
so edges are anti-aliased.

Layout: one object sits in the whole canvas; two objects sit in the two halves of the canvas (split
across or down, at random); three or four sit in cells of a 2x2 grid, the first two in neighbouring
cells. So the first two objects are always side by side or one above the other.

What each sample carries:

- ``caption``: "a small red circle above a large blue square" — "a <size> <colour> <shape>" per object
  (the size word is left out when ``sizes`` has one entry), the relation of the first object to the second
  ("above", "below", "to the left of", "to the right of"), further objects after "and", and
  "on a <tint> background" when ``backgrounds`` has more than one entry.
- ``label``: the shape and colour of the first object (the caption's subject),
  ``shapes.index(shape) * len(colours) + colours.index(colour)``; names in :func:`class_names`
  ("red circle").
- ``segmentation``: int64 ``[H, W]``, 0 = background, ``1 + shapes.index(shape)`` inside an object;
  names in :func:`segmentation_classes` (``["background", "circle", ...]``).

``synthetic-easy`` (one large object, three shapes, three colours, white background) gives crisp images
that a tiny text-conditional model learns in minutes on a CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from ldmkit.data.config import DataConfig, SyntheticConfig
from ldmkit.data.splits import check_split
from ldmkit.data.transforms import to_tensor

RGB = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 200, 30),
    "purple": (140, 60, 180), "orange": (245, 130, 30), "cyan": (30, 190, 200), "pink": (240, 110, 170),
    "brown": (130, 80, 40), "black": (20, 20, 20), "gray": (128, 128, 128),
    "white": (255, 255, 255), "cream": (250, 240, 215), "light gray": (215, 215, 215),
    "pale blue": (210, 225, 245), "pale green": (215, 240, 215), "pale pink": (245, 220, 225),
    "pale yellow": (250, 245, 205),
}
# Radius of an object as a fraction of the shorter side of its cell.
SIZE_FRACTION = {"small": 0.24, "medium": 0.33, "large": 0.42}


def _regular(n: int, radius: float = 1.0, start: float = -90.0) -> list[tuple[float, float]]:
    return [(radius * math.cos(math.radians(start + 360.0 * k / n)),
             radius * math.sin(math.radians(start + 360.0 * k / n))) for k in range(n)]


def _star(points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    outer = _regular(points)
    inside = _regular(points, inner, -90.0 + 180.0 / points)
    return [p for pair in zip(outer, inside) for p in pair]


def _cross(arm: float = 0.32) -> list[tuple[float, float]]:
    a, b = arm, 0.92
    return [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a)]


# Outlines around (0, 0) within radius 1 (y grows downwards); the circle is drawn as an ellipse.
POLYGONS = {
    "square": [(-0.78, -0.78), (0.78, -0.78), (0.78, 0.78), (-0.78, 0.78)],
    "triangle": [(x, y + 0.1) for x, y in _regular(3)],
    "star": _star(),
    "diamond": _regular(4),
    "hexagon": _regular(6, 1.0, 0.0),
    "cross": _cross(),
}


@dataclass(frozen=True)
class ShapeObject:
    """One object; coordinates are fractions of the canvas side, y grows downwards."""

    shape: str
    colour: str
    size: str
    cx: float
    cy: float
    radius: float


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]
    background: str
    relation: str | None  # of objects[0] to objects[1]; None for a single object


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _relation(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> str:
    if a[0] == b[0]:  # same column
        return "above" if a[1] < b[1] else "below"
    return "to the left of" if a[0] < b[0] else "to the right of"


def _cells(rng: np.random.Generator, n: int) -> list[tuple[float, float, float, float]]:
    """(x0, y0, w, h) of each object's cell; the first two cells are neighbours."""
    if n == 1:
        return [(0.0, 0.0, 1.0, 1.0)]
    if n == 2:
        halves = [(0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 0.5, 1.0)] if rng.random() < 0.5 else \
            [(0.0, 0.0, 1.0, 0.5), (0.0, 0.5, 1.0, 0.5)]
        return halves if rng.random() < 0.5 else halves[::-1]
    grid = [(0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (0.5, 0.5)]
    pairs = [(0, 1), (2, 3), (0, 2), (1, 3)]
    i, j = pairs[int(rng.integers(len(pairs)))]
    if rng.random() < 0.5:
        i, j = j, i
    rest = [k for k in range(4) if k not in (i, j)]
    order = [i, j] + [rest[k] for k in rng.permutation(len(rest))]
    return [grid[k] + (0.5, 0.5) for k in order[:n]]


def sample_scene(cfg: SyntheticConfig, index: int) -> Scene:
    """The scene of ``index`` (a pure function of ``cfg`` and ``index``)."""
    rng = np.random.default_rng([cfg.seed, index])
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    cells = _cells(rng, n)
    objects = []
    for x0, y0, w, h in cells:
        shape = cfg.shapes[int(rng.integers(len(cfg.shapes)))]
        colour = cfg.colours[int(rng.integers(len(cfg.colours)))]
        size = cfg.sizes[int(rng.integers(len(cfg.sizes)))]
        radius = SIZE_FRACTION[size] * min(w, h)
        room_x = max(w / 2 - radius * 1.05, 0.0) * cfg.position_jitter
        room_y = max(h / 2 - radius * 1.05, 0.0) * cfg.position_jitter
        cx = x0 + w / 2 + float(rng.uniform(-room_x, room_x))
        cy = y0 + h / 2 + float(rng.uniform(-room_y, room_y))
        objects.append(ShapeObject(shape, colour, size, cx, cy, radius))
    background = cfg.backgrounds[int(rng.integers(len(cfg.backgrounds)))]
    relation = _relation(cells[0], cells[1]) if n >= 2 else None
    return Scene(tuple(objects), background, relation)


def describe_object(obj: ShapeObject, cfg: SyntheticConfig) -> str:
    words = ([obj.size] if len(cfg.sizes) > 1 else []) + [obj.colour, obj.shape]
    return f"{_article(words[0])} {' '.join(words)}"


def scene_caption(scene: Scene, cfg: SyntheticConfig) -> str:
    parts = [describe_object(o, cfg) for o in scene.objects]
    text = parts[0] if scene.relation is None else f"{parts[0]} {scene.relation} {parts[1]}"
    for extra in parts[2:]:
        text += f" and {extra}"
    if len(cfg.backgrounds) > 1:
        text += f" on {_article(scene.background)} {scene.background} background"
    return text


def scene_label(scene: Scene, cfg: SyntheticConfig) -> int:
    first = scene.objects[0]
    return cfg.shapes.index(first.shape) * len(cfg.colours) + cfg.colours.index(first.colour)


def class_names(cfg: SyntheticConfig) -> list[str]:
    """Label names, index = ``shape_index * len(colours) + colour_index``."""
    return [f"{colour} {shape}" for shape in cfg.shapes for colour in cfg.colours]


def segmentation_classes(cfg: SyntheticConfig) -> list[str]:
    """Names of the segmentation map's classes: 0 = background, then the shapes."""
    return ["background", *cfg.shapes]


def _draw(draw: ImageDraw.ImageDraw, obj: ShapeObject, side: int, fill: int | tuple[int, int, int]) -> None:
    cx, cy, r = obj.cx * side, obj.cy * side, obj.radius * side
    if obj.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon([(cx + x * r, cy + y * r) for x, y in POLYGONS[obj.shape]], fill=fill)


def render_scene(scene: Scene, cfg: SyntheticConfig, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """(``uint8 [H, W, 3]`` anti-aliased image, ``uint8 [H, W]`` segmentation map)."""
    side = resolution * cfg.supersample
    image = Image.new("RGB", (side, side), RGB[scene.background])
    seg = Image.new("L", (resolution, resolution), 0)
    draw, draw_seg = ImageDraw.Draw(image), ImageDraw.Draw(seg)
    for obj in scene.objects:
        _draw(draw, obj, side, RGB[obj.colour])
        _draw(draw_seg, obj, resolution, 1 + cfg.shapes.index(obj.shape))
    if cfg.supersample > 1:
        image = image.reduce(cfg.supersample)  # box filter: the anti-aliasing
    return np.asarray(image), np.asarray(seg)


class SyntheticShapes(Dataset):
    """Map-style data set of :func:`sample_scene` scenes (``split`` train: indices ``0..count-1``;
    val/test: the next ``round(count * val_fraction)``; all: both)."""

    def __init__(self, cfg: DataConfig, split: str = "train"):
        check_split(split)
        self.cfg, self.syn = cfg, cfg.synthetic
        held = max(1, round(self.syn.count * cfg.val_fraction)) if cfg.val_fraction > 0 else 0
        self.start, self.length = {"train": (0, self.syn.count), "val": (self.syn.count, held),
                                   "test": (self.syn.count, held), "all": (0, self.syn.count + held)}[split]
        self.class_names = class_names(self.syn)
        self.segmentation_classes = segmentation_classes(self.syn)

    def __len__(self) -> int:
        return self.length

    def scene(self, i: int) -> Scene:
        if not 0 <= i < self.length:
            raise IndexError(f"scene {i} is outside 0..{self.length - 1}")
        return sample_scene(self.syn, self.start + i)

    def __getitem__(self, i: int) -> dict:
        scene = self.scene(i)
        rgb, seg = render_scene(scene, self.syn, self.cfg.resolution)
        if self.cfg.channels == 1:
            rgb = np.asarray(Image.fromarray(rgb).convert("L"))
        return {
            "image": to_tensor(rgb),  # [C, H, W] in [-1, 1]
            "label": scene_label(scene, self.syn),
            "caption": scene_caption(scene, self.syn),
            "segmentation": torch.from_numpy(seg.astype(np.int64)),  # [H, W]
        }
