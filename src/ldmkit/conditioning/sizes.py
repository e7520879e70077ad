"""Size micro-conditioning (Podell et al. 2023, "SDXL", §2.2-2.3): the six numbers of ``Conditioning.sizes``.

Training images are resized and cropped to their output (a square or an aspect-ratio bucket); the model is told
each image's original size (h, w), where its crop starts (top, left, in the resized image) and the output size
(h, w), so that small, upscaled or badly cropped images no longer teach it blur and cut-off objects. At sampling
the output size is the requested one and, unless the caller says otherwise, the original size equals it and the
crop starts at (0, 0): a well-framed image at full resolution.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ldmkit.data.transforms import CROP_TOP_LEFT, ORIGINAL_SIZE, OUTPUT_SIZE
from ldmkit.errors import ConfigError, DataError


def batch_sizes(batch: Mapping[str, Any]) -> torch.Tensor:
    """``Conditioning.sizes`` [B, 6] of a training batch with its recorded geometry: images [B, C, H, W], or
    latents [B, c, h, w] with the encoded images' sizes (a latent cache of such images)."""
    image, latent = batch.get("image"), batch.get("latent")
    if batch.get(ORIGINAL_SIZE) is None or batch.get(CROP_TOP_LEFT) is None or \
            (image is None and batch.get(OUTPUT_SIZE) is None):
        raise DataError("size conditioning (conditioner.size_conditioning) needs each image's original size and "
                        "crop: image folders and manifests record them, and so do latent caches encoded from "
                        "them; this source does not (use an image folder, or set size_conditioning: false)")
    on = image if image is not None else latent
    device = on.device if on is not None else None  # the batch may already be on an accelerator, or not
    original = torch.as_tensor(batch[ORIGINAL_SIZE], device=device).reshape(-1, 2)  # [B, 2]
    crop = torch.as_tensor(batch[CROP_TOP_LEFT], device=device).reshape(-1, 2)  # [B, 2]
    if image is not None:
        output = torch.tensor(image.shape[-2:], device=device).expand(image.shape[0], 2)  # [B, 2]
    else:
        output = torch.as_tensor(batch[OUTPUT_SIZE], device=device).reshape(-1, 2)
    return torch.cat([original, crop, output], dim=1).float()


def requested_sizes(count: int, height: int, width: int, original_size: tuple[int, int] | None = None,
                    crop_top_left: tuple[int, int] = (0, 0), device: torch.device | str | None = None) -> torch.Tensor:
    """``Conditioning.sizes`` [count, 6] for ``count`` images of ``height × width`` pixels (sampling)."""
    original = (height, width) if original_size is None else tuple(original_size)
    check_size_request(original, tuple(crop_top_left))
    row = torch.tensor([*original, *crop_top_left, height, width], dtype=torch.float32, device=device)
    return row.expand(count, 6).clone()


def check_size_request(original_size: tuple[int, ...], crop_top_left: tuple[int, ...]) -> None:
    """A one-line error unless the original size is two positive integers and the crop two non-negative ones."""
    if len(original_size) != 2 or not all(isinstance(v, int) and 0 < v <= 1 << 16 for v in original_size):
        raise ConfigError(f"original size must be two whole numbers of pixels (height width) in 1..65536; "
                          f"got {original_size}")
    if len(crop_top_left) != 2 or not all(isinstance(v, int) and 0 <= v <= 1 << 16 for v in crop_top_left):
        raise ConfigError(f"crop top-left must be two whole numbers of pixels (top left) in 0..65536; "
                          f"got {crop_top_left}")


__all__ = ["batch_sizes", "check_size_request", "requested_sizes"]
