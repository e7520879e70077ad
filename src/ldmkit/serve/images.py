"""Bringing images from the browser to sizes a model can sample: fitting, cropping, masks from an editor.

A model samples images whose sides are multiples of ``f × UNet downsampling`` (the *grid*); the web app
fits uploads to that grid instead of refusing them. Masks follow the pipelines' convention: white = fill
in, black = keep.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image

from ldmkit.errors import ConfigError, DataError

Box = tuple[tuple[int, int], tuple[int, int, int, int]]  # (resized width, height), crop (left, top, right, bottom)


def fit_box(size: tuple[int, int], short_side: int | None, multiple: int) -> Box:
    """Where an image of ``size`` (width, height) goes: ``(resized (w, h), centred crop box)``.

    The image is scaled so its shorter side is ``short_side`` (``None``: kept), then cropped about its
    centre to the largest multiple of ``multiple`` on each side.
    """
    width, height = size
    if short_side is not None:
        scale = short_side / min(width, height)
        width, height = max(round(width * scale), 1), max(round(height * scale), 1)
    out_w, out_h = width // multiple * multiple, height // multiple * multiple
    if out_w == 0 or out_h == 0:
        raise DataError(f"the image is {size[0]}x{size[1]} pixels; this model needs sides of at least {multiple} "
                        "pixels: give a larger image")
    left, top = (width - out_w) // 2, (height - out_h) // 2
    return (width, height), (left, top, left + out_w, top + out_h)


def fit_image(image: Image.Image, box: Box,
              resample: Image.Resampling = Image.Resampling.LANCZOS) -> Image.Image:
    """Apply a :func:`fit_box` result (masks and maps use ``Image.Resampling.NEAREST`` to stay exact)."""
    resized, crop = box
    if resized != image.size:
        image = image.resize(resized, resample)
    return image.crop(crop) if crop != (0, 0, *resized) else image


def crop_ids(ids: torch.Tensor, multiple: int) -> torch.Tensor:
    """A map of class ids [H, W] cropped about its centre to multiples of ``multiple`` (ids stay exact)."""
    height, width = ids.shape[-2:]
    (_, _), (left, top, right, bottom) = fit_box((width, height), None, multiple)
    return ids[..., top:bottom, left:right]


def editor_layers(value: Mapping[str, Any] | Image.Image | None) -> tuple[Image.Image | None, Image.Image | None]:
    """``(image, mask)`` from an image editor's value ``{"background", "layers", "composite"}``.

    The image is the background (RGB); the mask is white wherever any drawn layer is not transparent,
    black elsewhere (``None`` when nothing was drawn). A plain image is taken as the image, with no mask.
    """
    if value is None:
        return None, None
    if isinstance(value, Image.Image):
        return value.convert("RGB"), None
    background = value.get("background")
    if background is None:
        background = value.get("composite")
    if background is None:
        return None, None
    background = _as_image(background)
    painted = np.zeros((background.height, background.width), dtype=bool)
    for layer in value.get("layers") or []:
        layer = _as_image(layer)
        if layer.size != background.size:
            layer = layer.resize(background.size, Image.Resampling.NEAREST)
        alpha = np.asarray(layer.convert("RGBA"))[..., 3]
        painted |= alpha > 0
    mask = Image.fromarray(painted.astype(np.uint8) * 255, mode="L") if painted.any() else None
    return background.convert("RGB"), mask


def _as_image(value: Any) -> Image.Image:
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, np.ndarray):
        return Image.fromarray(value)
    if isinstance(value, str):
        from ldmkit.pipelines.img2img import read_image_file

        return read_image_file(value)
    raise ConfigError(f"cannot read an image from a {type(value).__name__}; give a PIL image, an array or a path")


__all__ = ["crop_ids", "editor_layers", "fit_box", "fit_image"]
