"""The interface every first stage offers to the diffusion code (paper §3.1, §3.2).

The diffusion model only ever calls :meth:`FirstStage.encode` / :meth:`FirstStage.encode_distribution`
and :meth:`FirstStage.decode`, which work on *scaled* latents ``(z − shift_factor) · scale_factor``
(scale_factor = 1/std of the latents, so that the diffusion model sees roughly unit variance).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch
from torch import nn

from ldmkit.autoencoders.config import AutoencoderConfig
from ldmkit.errors import DataError


class LatentMoments(NamedTuple):
    """Mean and standard deviation of the (scaled) latent posterior; ``std`` is 0 for deterministic encoders."""

    mean: torch.Tensor  # [B, c, h, w]
    std: torch.Tensor  # [B, c, h, w]

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """mean + std · ε (the latent a trainer draws from a cached posterior)."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps


class FirstStage(nn.Module):
    """Base class: latent scaling, input-size checks and the common properties.

    Subclasses implement ``_encode_raw(x) -> LatentMoments`` (unscaled), ``_decode_raw(z)`` and
    ``forward(x, sample_posterior=True) -> (reconstruction, aux)``.
    """

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.config = cfg  # always current: set_latent_scale() replaces it

    @property
    def scale_factor(self) -> float:
        return self.config.scale_factor

    @property
    def shift_factor(self) -> float:
        return self.config.shift_factor

    # -- properties used by the diffusion code and the trainer ------------------------------------------
    @property
    def downsample_factor(self) -> int:
        """f = H / h."""
        return self.config.downsample_factor

    @property
    def latent_channels(self) -> int:
        """Channels c of the latent."""
        return self.config.z_channels

    @property
    def last_layer(self) -> torch.Tensor | None:
        """The decoder's final convolution weight (adaptive GAN weight); ``None`` without a decoder."""
        return None

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(c, h, w) of the latent of an image of ``height × width`` pixels."""
        self.check_size(height, width)
        f = self.downsample_factor
        return self.latent_channels, height // f, width // f

    def check_size(self, height: int, width: int) -> None:
        f = self.downsample_factor
        if height % f or width % f:
            raise DataError(
                f"image size {height}×{width} is not divisible by the autoencoder's downsampling factor {f}; "
                f"crop or resize images to multiples of {f}")

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise DataError(
                f"autoencoder input must be [B, {self.config.in_channels}, H, W], got {list(x.shape)}")
        self.check_size(x.shape[-2], x.shape[-1])

    # -- scaling ------------------------------------------------------------------------------------------
    def set_latent_scale(self, scale_factor: float, shift_factor: float | None = None) -> None:
        """Store the latent scaling used by encode()/decode() in ``self.config`` (saved with the model)."""
        if not math.isfinite(scale_factor) or scale_factor == 0:
            raise ValueError(f"scale_factor must be a finite non-zero number, got {scale_factor}")
        shift = self.config.shift_factor if shift_factor is None else float(shift_factor)
        self.config = dataclasses.replace(self.config, scale_factor=float(scale_factor), shift_factor=shift)

    def scale_latents(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.shift_factor) * self.scale_factor

    def unscale_latents(self, z: torch.Tensor) -> torch.Tensor:
        return z / self.scale_factor + self.shift_factor

    # -- the common interface -----------------------------------------------------------------------------
    def encode_distribution(self, x: torch.Tensor, *, scaled: bool = True) -> LatentMoments:
        """x [B, in, H, W] in [-1, 1] → mean and std of the latent posterior, scaled unless ``scaled=False``."""
        self._check_input(x)
        moments = self._encode_raw(x)
        if not scaled:
            return moments
        return LatentMoments(self.scale_latents(moments.mean), moments.std * abs(self.scale_factor))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, in, H, W] in [-1, 1] → scaled latent [B, c, H/f, W/f] (the posterior mode for KL)."""
        return self.encode_distribution(x).mean

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latent [B, c, h, w] → image [B, out, h·f, w·f] (roughly in [-1, 1])."""
        if z.dim() != 4 or z.shape[1] != self.latent_channels:
            raise DataError(f"latent must be [B, {self.latent_channels}, h, w], got {list(z.shape)}")
        return self._decode_raw(self.unscale_latents(z))

    def _encode_raw(self, x: torch.Tensor) -> LatentMoments:  # pragma: no cover - abstract
        raise NotImplementedError

    def _decode_raw(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
