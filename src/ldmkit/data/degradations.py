"""Degradations that make the low-resolution input of super-resolution training (paper §4.4).

- ``bicubic``: the paper's setting — bicubic downsampling by the factor (antialiased), as in SR3;
- ``blind``: a randomised chain in the spirit of BSR-degradation (Zhang et al. 2021) and Real-ESRGAN
  (Wang et al. 2021), for an upscaler that generalises beyond bicubic inputs (the paper's LDM-BSR, §4.4
  and App. D.6.1): Gaussian blur with a random σ → downsampling with a random kernel (bicubic, bilinear,
  area) → Gaussian noise with a random σ → JPEG with a random quality. Each step is applied with its own
  probability; every random draw comes from the given ``torch.Generator``, so a seeded generator
  reproduces a batch exactly.

Images are ``[B, C, H, W]`` in ``[-1, 1]``; outputs are ``[B, C, H/factor, W/factor]`` in ``[-1, 1]``.
The ranges of the blind chain are :class:`BlindDegradationConfig`.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ldmkit.config import option
from ldmkit.errors import ConfigError, DataError

#: Downsampling kernels the blind chain may draw from.
RESIZE_MODES = ("bicubic", "bilinear", "area")


@dataclass(frozen=True)
class BlindDegradationConfig:
    """Ranges of the randomised degradation chain of blind super-resolution (``low_res_degradation: blind``).

    In the spirit of BSR-degradation / Real-ESRGAN: blur → downsample → noise → JPEG, each step drawn per
    image (see :mod:`ldmkit.data.degradations`).
    """

    blur_prob: float = option(0.7, help="probability of a Gaussian blur before downsampling", min=0.0, max=1.0)
    blur_sigma: tuple[float, float] = option((0.2, 2.0), help="range [low, high] of the blur's standard deviation, "
                                                             "in high-resolution pixels", min=0.0)
    resize_modes: tuple[str, ...] = option(("bicubic", "bilinear", "area"),
                                           help="downsampling kernels, one drawn uniformly per image",
                                           choices=("bicubic", "bilinear", "area"))
    noise_prob: float = option(0.7, help="probability of adding Gaussian noise after downsampling", min=0.0, max=1.0)
    noise_sigma: tuple[float, float] = option((1.0, 20.0), help="range [low, high] of the noise's standard "
                                                               "deviation on the 0-255 scale", min=0.0)
    jpeg_prob: float = option(0.7, help="probability of a JPEG round trip at the end", min=0.0, max=1.0)
    jpeg_quality: tuple[int, int] = option((30, 95), help="range [low, high] of the JPEG quality", min=1, max=100)

    def __post_init__(self) -> None:
        for name in ("blur_sigma", "noise_sigma", "jpeg_quality"):
            low, high = getattr(self, name)
            if low > high:
                raise ConfigError(f"concat.blind.{name} must be [low, high] with low <= high; got [{low}, {high}]")
        if not self.resize_modes:
            raise ConfigError("concat.blind.resize_modes is empty; give at least one of bicubic, bilinear, area")


def resize_image(image: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """Resize ``[B, C, H, W]`` to ``size`` (antialiased when shrinking), clamped to [-1, 1]."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    if mode not in RESIZE_MODES:
        raise ConfigError(f"resize mode '{mode}' is not one of {', '.join(RESIZE_MODES)}")
    shrink = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    if mode == "area":
        out = F.interpolate(image.float(), size=size, mode="area")
    else:
        out = F.interpolate(image.float(), size=size, mode=mode, align_corners=False, antialias=shrink)
    return out.clamp(-1.0, 1.0).to(image.dtype)


def _low_res_size(image: torch.Tensor, factor: int) -> tuple[int, int]:
    h, w = image.shape[-2:]
    if factor < 1 or h % factor or w % factor:
        raise DataError(f"image size {h}x{w} is not divisible by the super-resolution factor {factor}; "
                        f"crop or resize images to multiples of {factor}")
    return h // factor, w // factor


def degrade_bicubic(image: torch.Tensor, factor: int) -> torch.Tensor:
    """The low-resolution input of super-resolution: bicubic downsampling by ``factor`` (paper §4.4)."""
    return resize_image(image, _low_res_size(image, factor))


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[B, C, H, W]`` with standard deviation ``sigma`` pixels (edges replicated)."""
    if sigma <= 0:
        return image
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=image.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()  # [K]
    channels = image.shape[1]
    x = F.pad(image.float(), (radius, radius, radius, radius), mode="replicate")  # [B, C, H + 2r, W + 2r]
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)  # along W
    x = F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)  # along H
    return x.to(image.dtype)  # [B, C, H, W]


def jpeg_roundtrip(image: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode one image ``[C, H, W]`` (C = 1 or 3, in [-1, 1]) as JPEG at ``quality`` and decode it (Pillow)."""
    if image.shape[0] not in (1, 3):
        raise DataError(f"JPEG degradation needs 1 or 3 channels; got {image.shape[0]}")
    pixels = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    array = pixels.permute(1, 2, 0).numpy()
    pil = Image.fromarray(array[..., 0] if array.shape[2] == 1 else np.ascontiguousarray(array))
    buffer = io.BytesIO()
    pil.save(buffer, format="JPEG", quality=int(quality))
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert(pil.mode), dtype=np.float32)
    decoded = decoded[..., None] if decoded.ndim == 2 else decoded
    out = torch.from_numpy(decoded.copy()).permute(2, 0, 1) / 127.5 - 1.0  # [C, H, W]
    return out.to(device=image.device, dtype=image.dtype)


def _uniform(u: float, low: float, high: float) -> float:
    return low + u * (high - low)


def degrade_blind(image: torch.Tensor, factor: int, config: BlindDegradationConfig,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """The randomised blind degradation chain (blur → downsample → noise → JPEG), per image of the batch.

    Every random number comes from ``generator`` (the global torch generator when None), drawn in a fixed
    order, so the same seed gives the same low-resolution batch.
    """
    size = _low_res_size(image, factor)
    draw_device = generator.device if generator is not None else torch.device("cpu")
    # Seven uniforms per image: blur?, σ_blur, kernel, noise?, σ_noise, JPEG?, quality.
    draws = torch.rand(image.shape[0], 7, generator=generator, device=draw_device).tolist()
    out = []
    for sample, (blur_u, sigma_u, mode_u, noise_u, noise_sigma_u, jpeg_u, quality_u) in zip(image, draws):
        x = sample[None].float()  # [1, C, H, W]
        if blur_u < config.blur_prob:
            x = gaussian_blur(x, _uniform(sigma_u, *config.blur_sigma))
        modes = config.resize_modes
        x = resize_image(x, size, modes[min(int(mode_u * len(modes)), len(modes) - 1)])  # [1, C, h, w]
        if noise_u < config.noise_prob:
            sigma = _uniform(noise_sigma_u, *config.noise_sigma) / 127.5  # 0-255 scale → [-1, 1] scale
            noise = torch.randn(x.shape, generator=generator, device=draw_device)
            x = (x + sigma * noise.to(x.device)).clamp(-1.0, 1.0)
        if jpeg_u < config.jpeg_prob:
            x = jpeg_roundtrip(x[0], round(_uniform(quality_u, *config.jpeg_quality)))[None]
        out.append(x.to(image.dtype))
    return torch.cat(out)  # [B, C, h, w]


def degrade(image: torch.Tensor, factor: int, kind: str = "bicubic", blind: BlindDegradationConfig | None = None,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """``image`` [B, C, H, W] → its low-resolution input [B, C, H/factor, W/factor] by the degradation ``kind``."""
    if kind == "bicubic":
        return degrade_bicubic(image, factor)
    if kind == "blind":
        if blind is None:
            blind = BlindDegradationConfig()
        return degrade_blind(image, factor, blind, generator)
    raise ConfigError(f"low-resolution degradation '{kind}' is not one of bicubic, blind")


__all__ = ["RESIZE_MODES", "degrade", "degrade_bicubic", "degrade_blind", "gaussian_blur", "jpeg_roundtrip",
           "resize_image"]
