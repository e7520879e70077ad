"""The data configuration: which source, where it lies, and how images become training samples.

Every source yields the same sample, a dict:

- ``"image"``: float32 tensor ``[C, H, W]`` in ``[-1, 1]`` (``C`` = ``channels``; gray data is repeated to
  three channels unless ``channels=1``),
- ``"label"``: int (``-1`` where the source has none),
- ``"caption"``: str (``""`` where the source has none),
- ``"segmentation"`` (synthetic scenes only): int64 ``[H, W]`` per-pixel class map.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Literal

from PIL import ImageColor

from ldmkit.config import option
from ldmkit.data.buckets import BucketConfig
from ldmkit.errors import ConfigError

SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "pink", "brown", "black", "gray")
BACKGROUNDS = ("white", "cream", "light gray", "pale blue", "pale green", "pale pink", "pale yellow")
SIZES = ("small", "medium", "large")
EMOJI_SETS = ("fluent-emoji-3d", "twemoji", "noto-emoji")
SOURCES = ("synthetic", "folder", "shards", "fashion_mnist", "emoji")
#: Largest training image side (the paper trains at up to 1024 px; a 4096² batch of 16 is already ~3 GB of pixels).
MAX_RESOLUTION = 4096
#: Largest canvas side the synthetic source draws on (resolution × supersample).
MAX_SYNTHETIC_CANVAS = 16384


def emoji_sets(emoji_set: str) -> tuple[str, ...]:
    """The set names of ``data.emoji_set`` ("fluent-emoji-3d+twemoji" -> both), each checked."""
    names = tuple(part.strip() for part in emoji_set.split("+"))
    for name in names:
        if name not in EMOJI_SETS:
            close = difflib.get_close_matches(name, EMOJI_SETS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"config key 'emoji_set': unknown emoji set '{name}'{hint}; known sets: "
                              f"{', '.join(EMOJI_SETS)}, several joined by '+'")
    if len(set(names)) != len(names):
        raise ConfigError(f"config key 'emoji_set' names a set twice: {emoji_set!r}")
    return names


def _unique(name: str, values: tuple[str, ...]) -> None:
    if not values:
        raise ConfigError(f"config key 'synthetic.{name}' must name at least one value")
    if len(set(values)) != len(values):
        raise ConfigError(f"config key 'synthetic.{name}' lists a value twice: {list(values)}")


@dataclass(frozen=True)
class SyntheticConfig:
    """Scenes of coloured shapes drawn in code (see :mod:`ldmkit.data.synthetic`)."""

    count: int = option(10000, help="number of training scenes (the held-out split adds count*val_fraction more)",
                        min=1)
    seed: int = option(0, help="scene i is a pure function of (seed, i)", min=0)
    shapes: tuple[str, ...] = option(("circle", "square", "triangle", "star"), help="shapes to draw",
                                     choices=SHAPES)
    colours: tuple[str, ...] = option(("red", "green", "blue", "yellow"), help="object colours", choices=COLOURS)
    sizes: tuple[str, ...] = option(("small", "large"), help="object sizes (the size word is left out of captions "
                                    "when only one is allowed)", choices=SIZES)
    min_objects: int = option(1, help="fewest objects in a scene", min=1, max=4)
    max_objects: int = option(2, help="most objects in a scene (2 objects: the caption names their relation)",
                              min=1, max=4)
    backgrounds: tuple[str, ...] = option(("white",), help="background tints (named in captions when more than one)",
                                          choices=BACKGROUNDS)
    position_jitter: float = option(1.0, help="how far objects wander inside their cell (0 = centred)",
                                    min=0.0, max=1.0)
    supersample: int = option(4, help="draw at this multiple of the resolution, then downsample (anti-aliasing)",
                              min=1, max=8)

    def __post_init__(self) -> None:
        for name in ("shapes", "colours", "sizes", "backgrounds"):
            _unique(name, getattr(self, name))
        if self.min_objects > self.max_objects:
            raise ConfigError(f"config key 'synthetic.min_objects' ({self.min_objects}) is larger than "
                              f"'synthetic.max_objects' ({self.max_objects})")


@dataclass(frozen=True)
class DataConfig:
    """Which images to train on and how to turn them into ``[C, H, W]`` tensors in ``[-1, 1]``."""

    source: Literal["synthetic", "folder", "shards", "fashion_mnist", "emoji"] = option(
        "synthetic", help="synthetic shapes, an image folder, tar shards, Fashion-MNIST or an emoji set")
    path: str | None = option(None, help="folder, shard directory/glob or data set directory (null: the source's "
                              "default place under $LDMKIT_HOME)")
    emoji_set: str = option("fluent-emoji-3d", help="which emoji set when source=emoji and path is null: "
                            f"{', '.join(EMOJI_SETS)}; several joined by '+' train together (each emoji held out "
                            "of all or none, captions begin with the set's style)")
    emoji_captions: Literal["name", "described"] = option(
        "name", help="emoji captions: the name ('grinning face'), or described: the name, its subcategory and "
        "category ('grinning face, face smiling, smileys and emotion')")
    resolution: int = option(32, help="side of the square images, in pixels", min=1, max=MAX_RESOLUTION)
    channels: int = option(3, help="3 = RGB (gray sources repeated), 1 = gray", choices=(1, 3))
    resize: bool = option(True, help="resize the shorter side to `resolution` (false: crop, or pad small images)")
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos", "box"] = option(
        "bicubic", help="resampling filter of the resize (anti-aliased when shrinking)")
    crop: Literal["center", "random"] = option("center", help="where to take the square crop")
    flip: bool = option(False, help="random horizontal flips (keep off for text, emoji, left/right captions)")
    pad: int = option(0, help="pixels of background added on every side before resizing (Fashion-MNIST 28 -> 32: 2)",
                      min=0, max=MAX_RESOLUTION)
    background: str = option("white", help="colour behind transparent pixels and padding: a name or #rrggbb")
    label_source: Literal["subfolder", "manifest", "none"] = option(
        "subfolder", help="folder labels: first sub-folder name, a CSV/JSONL manifest, or none")
    manifest: str | None = option(None, help="manifest file (CSV or JSONL; columns file, label, caption), relative "
                                  "to path; null: path/manifest.csv or path/manifest.jsonl")
    labels: tuple[int, ...] = option((), help="keep only the items of these class labels (empty: all); the class "
                                     "count stays the source's", min=0)
    val_fraction: float = option(0.1, help="held-out fraction for sources without splits (split=val/test)",
                                 min=0.0, max=0.9)
    split_seed: int = option(0, help="seed of the held-out split (fixed, so the split never moves)", min=0)
    max_bad_fraction: float = option(0.01, help="stop when more than this fraction of files cannot be read",
                                     min=0.0, max=1.0)
    max_pixels: int = option(50_000_000, help="images with more pixels are refused (decompression bombs)", min=1)
    synthetic: SyntheticConfig = option(default_factory=SyntheticConfig, help="options of the synthetic source")
    buckets: BucketConfig = option(default_factory=BucketConfig,
                                   help="aspect-ratio buckets for folders of mixed shapes (training split)")

    def __post_init__(self) -> None:
        try:
            ImageColor.getrgb(self.background)
        except ValueError:
            raise ConfigError(f"config key 'background': got {self.background!r}, expected a colour name such as "
                              "'white' or a hex colour such as '#808080'") from None
        emoji_sets(self.emoji_set)  # a typo fails at load time, not when the data is first read
        canvas = self.resolution * self.synthetic.supersample
        if self.source == "synthetic" and canvas > MAX_SYNTHETIC_CANVAS:
            raise ConfigError(f"config key 'synthetic.supersample': resolution {self.resolution} x supersample "
                              f"{self.synthetic.supersample} = a {canvas}-pixel canvas, more than "
                              f"{MAX_SYNTHETIC_CANVAS}; lower synthetic.supersample")
        if self.source == "synthetic" and self.flip:
            raise ConfigError("config key 'flip': synthetic captions say left and right, so flipping would make "
                              "them wrong; set flip=false")

    @property
    def background_rgb(self) -> tuple[int, int, int]:
        return ImageColor.getrgb(self.background)[:3]
