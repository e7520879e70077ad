"""Image-like conditions brought to the latent grid and concatenated to the UNet input (paper §3.3).

- inpainting (§4.5): the masked image encoded by the first stage, plus the mask on the latent grid
  (C = latent channels + 1);
- super-resolution (§4.4): the low-resolution image resized (bicubic) to the latent grid — the paper
  concatenates it directly, τ_θ being the identity — or upsampled and encoded by the first stage; during
  training it is made from the image by a degradation (:mod:`ldmkit.data.degradations`: bicubic or blind);
- semantic synthesis (§4.3.2): the one-hot semantic map on the latent grid (C = number of classes).

The functions work on tensors (for sampling pipelines); :class:`ConcatEncoder` applies the configured one
to a training batch.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ldmkit.conditioning.config import ConcatConfig
from ldmkit.data.masks import random_masks
from ldmkit.conditioning.types import Conditioning
from ldmkit.data.degradations import degrade, degrade_bicubic, resize_image  # noqa: F401 (re-exported)
from ldmkit.errors import ConfigError, DataError

#: The first stage's encoder: image [B, 3, H, W] in [-1, 1] → latents [B, c, H/f, W/f], scaled as the
#: denoiser sees them.
ImageEncoder = Callable[[torch.Tensor], torch.Tensor]


def latent_grid(height: int, width: int, factor: int) -> tuple[int, int]:
    """The latent grid (h, w) of an image of size (height, width) under a first stage of factor f."""
    if height % factor or width % factor:
        raise DataError(f"image size {height}x{width} is not divisible by the first stage factor {factor}")
    return height // factor, width // factor


def _as_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B, H, W] or [B, 1, H, W] (bool or float) → [B, 1, H, W] float in {0, 1}."""
    if mask.dim() == 3:
        mask = mask[:, None]
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise DataError(f"inpainting mask must be [B, 1, H, W] or [B, H, W], got {tuple(mask.shape)}")
    if mask.shape[-2:] != like.shape[-2:]:
        raise DataError(f"inpainting mask size {tuple(mask.shape[-2:])} differs from the image's "
                        f"{tuple(like.shape[-2:])}")
    return mask.to(device=like.device, dtype=like.dtype)


def masked_image_concat(image: torch.Tensor, mask: torch.Tensor, encode: ImageEncoder) -> Conditioning:
    """Inpainting condition: ``[E(image ⊙ (1 − mask)), mask↓]``, C = latent channels + 1.

    ``mask`` is 1 where the image is to be filled in. It is brought to the latent grid by max-pooling,
    so a latent cell counts as unknown as soon as one of its pixels is.
    """
    mask = _as_mask(mask, image)  # [B, 1, H, W]
    with torch.no_grad():
        latents = encode(image * (1.0 - mask))  # [B, c, h, w]
    small = F.adaptive_max_pool2d(mask, latents.shape[-2:])  # [B, 1, h, w]
    return Conditioning(concat=torch.cat([latents, small.to(latents.dtype)], dim=1))  # [B, c + 1, h, w]


def low_res_concat(low_res: torch.Tensor, grid: tuple[int, int], *, encode: ImageEncoder | None = None,
                   downsample_factor: int = 1) -> Conditioning:
    """Super-resolution condition on a latent grid (h, w).

    Without ``encode``: the low-resolution image resized (bicubic) to the grid, C = 3. With ``encode``:
    the image upsampled to the full size (grid × ``downsample_factor``) and encoded, C = latent channels.
    """
    if encode is None:
        return Conditioning(concat=resize_image(low_res, grid))  # [B, 3, h, w]
    full = (grid[0] * downsample_factor, grid[1] * downsample_factor)
    with torch.no_grad():
        latents = encode(resize_image(low_res, full))  # [B, c, h, w]
    if tuple(latents.shape[-2:]) != tuple(grid):
        raise ConfigError(f"the first stage gave latents of size {tuple(latents.shape[-2:])}, expected {grid}: "
                          f"check concat.downsample_factor")
    return Conditioning(concat=latents)


def one_hot_map(segmentation: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[B, H, W] integer map → [B, K, H, W] float one-hot; negative values (unlabelled) give all zeros."""
    if segmentation.dim() != 3 or segmentation.is_floating_point():
        raise DataError(f"semantic map must be an integer tensor [B, H, W], got {segmentation.dtype} "
                        f"{tuple(segmentation.shape)}")
    top = int(segmentation.max()) if segmentation.numel() else -1
    if top >= num_classes:
        raise DataError(f"semantic map holds class {top}, outside 0..{num_classes - 1} "
                        f"(set concat.semantic_classes to the number of classes)")
    labelled = segmentation >= 0  # [B, H, W]
    onehot = F.one_hot(segmentation.clamp(min=0).long(), num_classes)  # [B, H, W, K]
    onehot = onehot * labelled[..., None]
    return onehot.permute(0, 3, 1, 2).float()  # [B, K, H, W]


def semantic_concat(segmentation: torch.Tensor, num_classes: int, grid: tuple[int, int],
                    mode: str = "nearest") -> Conditioning:
    """Semantic synthesis condition: the one-hot map on the latent grid, C = ``num_classes``.

    ``nearest`` keeps hard one-hot vectors (the label at each cell's centre); ``area`` gives each cell
    the fraction of its pixels in each class.
    """
    if mode == "nearest":
        small = F.interpolate(segmentation[:, None].float(), size=grid, mode="nearest-exact")  # [B, 1, h, w]
        return Conditioning(concat=one_hot_map(small[:, 0].long(), num_classes))  # [B, K, h, w]
    if mode == "area":
        return Conditioning(concat=F.adaptive_avg_pool2d(one_hot_map(segmentation, num_classes), grid))
    raise ConfigError(f"semantic resize mode '{mode}' is not one of nearest, area")


def random_inpainting_mask(batch_size: int, height: int, width: int, generator: torch.Generator | None = None,
                           device: torch.device | str | None = None) -> torch.Tensor:
    """[B, 1, H, W] training masks: one rectangle per sample, each side ¼ to ¾ of the image (1 = fill in)."""
    draw = generator.device if generator is not None else torch.device("cpu")
    sizes = torch.rand(batch_size, 2, generator=generator, device=draw) * 0.5 + 0.25  # [B, 2]
    starts = torch.rand(batch_size, 2, generator=generator, device=draw)  # [B, 2]
    mask = torch.zeros(batch_size, 1, height, width)
    for i in range(batch_size):
        bh, bw = max(1, int(sizes[i, 0] * height)), max(1, int(sizes[i, 1] * width))
        top, left = int(starts[i, 0] * (height - bh + 1)), int(starts[i, 1] * (width - bw + 1))
        mask[i, 0, top: top + bh, left: left + bw] = 1.0
    return mask.to(device)


class ConcatEncoder(nn.Module):
    """Applies the configured concat route to a batch dict. It has no parameters of its own.

    The batch supplies ``image`` (and ``latent`` when latents were cached, which fixes the grid); the
    masked_image route takes ``mask`` from the batch or draws one per sample (``config.masks``, see
    :mod:`~ldmkit.data.masks`). Diffusion training puts masks in the batches of map-style data sets and
    shards (drawn in the data-loader workers, :mod:`ldmkit.data.masked`), so it draws here only for other
    data sets; the low_res route takes ``low_res`` or degrades ``image``; the semantic route needs
    ``segmentation``.
    """

    def __init__(self, config: ConcatConfig, first_stage: ImageEncoder | None = None):
        super().__init__()
        self.config = config
        self.set_first_stage(first_stage)

    def set_first_stage(self, first_stage: ImageEncoder | None) -> None:
        # Kept out of the module tree: the first stage is a separate model with its own weights.
        self.__dict__["first_stage"] = first_stage

    @property
    def channels(self) -> int:
        return self.config.channels

    def _need_first_stage(self) -> ImageEncoder:
        if self.first_stage is None:
            raise ConfigError(f"concat kind '{self.config.kind}' needs the first stage's encoder: pass "
                              f"first_stage= to build_conditioner or call set_first_stage")
        return self.first_stage

    def _grid(self, batch: Mapping[str, Any], key: str) -> tuple[int, int]:
        latent = batch.get("latent")
        if latent is not None:
            return tuple(latent.shape[-2:])
        if batch.get(key) is None:
            raise DataError(f"concat kind '{self.config.kind}' needs '{key}' in the batch")
        h, w = batch[key].shape[-2:]
        return latent_grid(h, w, self.config.downsample_factor)

    def forward(self, batch: Mapping[str, Any], generator: torch.Generator | None = None) -> Conditioning:
        kind = self.config.kind
        if kind == "masked_image":
            image = batch.get("image")
            if image is None:
                raise DataError("concat kind 'masked_image' needs 'image' in the batch")
            mask = batch.get("mask")
            if mask is None:
                mask = random_masks(image.shape[0], *image.shape[-2:], self.config.masks, generator, image.device)
            return masked_image_concat(image, mask, self._need_first_stage())
        if kind == "low_res":
            low_res = batch.get("low_res")
            if low_res is None:
                if batch.get("image") is None:
                    raise DataError("concat kind 'low_res' needs 'low_res' or 'image' in the batch")
                cfg = self.config
                low_res = degrade(batch["image"], cfg.low_res_factor, cfg.low_res_degradation, cfg.blind, generator)
            if batch.get("image") is not None or batch.get("latent") is not None:
                grid = self._grid(batch, "image")
            else:  # only the low-res image: the full size is its size × low_res_factor
                f = self.config.low_res_factor
                grid = latent_grid(low_res.shape[-2] * f, low_res.shape[-1] * f, self.config.downsample_factor)
            encode = self._need_first_stage() if self.config.low_res_mode == "encode" else None
            return low_res_concat(low_res, grid, encode=encode, downsample_factor=self.config.downsample_factor)
        if kind == "semantic":
            segmentation = batch.get("segmentation")
            if segmentation is None:
                raise DataError("concat kind 'semantic' needs 'segmentation' in the batch")
            grid = self._grid(batch, "segmentation")
            return semantic_concat(segmentation, self.config.semantic_classes, grid, self.config.semantic_resize)
        return Conditioning()
