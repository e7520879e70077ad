"""From a decoded PIL image to the sample tensor: alpha, padding, resize, crop, flip, scaling to [-1, 1].

Order (each step optional through :class:`~ldmkit.data.config.DataConfig`):

1. transparent pixels composited on ``background`` (RGBA, LA, palette transparency);
2. converted to RGB (gray repeated to three channels) or to gray when ``channels=1``;
3. ``pad`` pixels of ``background`` added on every side (Fashion-MNIST 28 -> 32);
4. the shorter side resized to ``resolution`` (``resize``), or a small image padded to it;
5. a square ``resolution`` crop, centred or random;
6. a random horizontal flip (``flip``);
7. ``uint8 [H, W, C]`` -> ``float32 [C, H, W]`` in ``[-1, 1]``.

Random choices draw from torch's generator, which the data loader seeds per worker. :meth:`ImageTransform.placed`
also says where the output came from (a :class:`Placement`: the original size and the crop's corner), which
image data sets put in each sample for size conditioning (:mod:`ldmkit.conditioning.sizes`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from ldmkit.data.config import DataConfig
from ldmkit.data.images import BadImage

#: Sample keys of an image's geometry: [2] integers each, (height, width) and (top, left) in pixels; a latent
#: cache also gives the (height, width) of the image it encoded.
ORIGINAL_SIZE, CROP_TOP_LEFT, OUTPUT_SIZE = "original_size", "crop_top_left", "output_size"

_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """``uint8 [H, W]`` or ``[H, W, C]`` -> ``float32 [C, H, W]`` in ``[-1, 1]``."""
    if array.ndim == 2:
        array = array[:, :, None]
    chw = np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32)  # [C, H, W], a fresh copy
    chw *= 1.0 / 127.5
    chw -= 1.0
    return torch.from_numpy(chw)


def flatten_alpha(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """An RGB or L image with any transparency composited onto ``background``."""
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        base = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(base, rgba).convert("RGB")
    if image.mode in ("L", "RGB"):
        return image
    if image.mode in ("I;16", "I", "F", "1"):
        return image.convert("L") if image.mode == "1" else _to_l(image)
    return image.convert("RGB")


def _to_l(image: Image.Image) -> Image.Image:
    array = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith("I") and array.max() > 255 else max(array.max(), 1.0)
    return Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8), "L")


@dataclass(frozen=True)
class Placement:
    """Where a transformed image came from: the decoded image's (height, width), and the (top, left) corner of the
    output in the resized image (negative where the output was padded around a smaller image), as seen in the
    output after any flip."""

    original_size: tuple[int, int]
    crop_top_left: tuple[int, int]

    def sample_keys(self) -> dict[str, torch.Tensor]:
        return {ORIGINAL_SIZE: torch.tensor(self.original_size), CROP_TOP_LEFT: torch.tensor(self.crop_top_left)}


class ImageTransform:
    """Callable: PIL image (any mode, any size) -> ``float32 [C, resolution, resolution]`` in ``[-1, 1]``."""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        self.background = cfg.background_rgb
        self.filter = _FILTERS[cfg.interpolation]

    def _fill(self, mode: str) -> int | tuple[int, int, int]:
        if mode == "L":
            r, g, b = self.background
            return round(0.299 * r + 0.587 * g + 0.114 * b)
        return self.background

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of a ``width × height`` image after padding and resizing, before the square crop."""
        cfg, size = self.cfg, self.cfg.resolution
        w, h = width + 2 * cfg.pad, height + 2 * cfg.pad
        if cfg.resize and min(w, h) != size:
            scale = size / min(w, h)
            return max(size, round(w * scale)), max(size, round(h * scale))
        return max(w, size), max(h, size)

    def check_size(self, width: int, height: int) -> None:
        """:class:`BadImage` when resizing would make more than ``max_pixels`` pixels (a very long, thin image
        becomes huge when its short side is scaled up to the resolution)."""
        w, h = self.resized_size(width, height)
        if w * h > self.cfg.max_pixels:
            raise BadImage(f"{width}x{height} would be resized to {w}x{h}, more than max_pixels={self.cfg.max_pixels} "
                           f"(aspect ratio {max(width, height) / max(min(width, height), 1):.0f}:1); crop it")

    def __call__(self, image: Image.Image, size: tuple[int, int] | None = None) -> torch.Tensor:
        """``size``: (height, width) of the output (an aspect-ratio bucket); default the square resolution."""
        return self.placed(image, size)[0]

    def placed(self, image: Image.Image, size: tuple[int, int] | None = None) -> tuple[torch.Tensor, Placement]:
        """The output of :meth:`__call__` and where in the original it lies."""
        cfg = self.cfg
        self.check_size(*image.size)  # before any copy: the resize is where such an image would blow up
        original = (image.height, image.width)
        image = flatten_alpha(image, self.background)
        image = image.convert("L") if cfg.channels == 1 else image.convert("RGB")
        if cfg.pad:
            image = ImageOps.expand(image, border=cfg.pad, fill=self._fill(image.mode))
        th, tw = size if size is not None else (cfg.resolution, cfg.resolution)
        w, h = image.size
        scale = max(tw / w, th / h)  # the smallest scale that covers the output: no distortion, least cropped
        if cfg.resize and scale != 1:
            new = (max(tw, round(w * scale)), max(th, round(h * scale)))
            image = image.resize(new, self.filter)
        content_width, pad_top, pad_left = image.width, 0, 0  # the resized image inside any padding
        if not (cfg.resize and scale != 1) and (w < tw or h < th):
            canvas = Image.new(image.mode, (max(w, tw), max(h, th)), self._fill(image.mode))
            pad_left, pad_top = (canvas.width - w) // 2, (canvas.height - h) // 2
            canvas.paste(image, (pad_left, pad_top))
            image = canvas
        w, h = image.size
        left = top = 0
        if (w, h) != (tw, th):
            if cfg.crop == "random":
                left = int(torch.randint(0, w - tw + 1, ()).item())
                top = int(torch.randint(0, h - th + 1, ()).item())
            else:
                left, top = (w - tw) // 2, (h - th) // 2
            image = image.crop((left, top, left + tw, top + th))
        array = np.asarray(image)
        if cfg.flip and bool(torch.rand(()) < 0.5):
            array = array[:, ::-1]
            # Mirrored, the output's left edge lies this far from the resized image's (once its right) edge.
            return to_tensor(array), Placement(original, (top - pad_top, pad_left + content_width - left - tw))
        return to_tensor(array), Placement(original, (top - pad_top, left - pad_left))
