"""Reconstruction metrics of the first stage (autoencoder): PSNR and SSIM, per image, batched.

Inputs are images [B, C, H, W] in [-1, 1] (the model's range); both metrics are computed on the [0, 1]
scale (``data_range`` 1). PSNR does not depend on that scale: on 8-bit values (peak 255) it is the same
number. With ``quantize=True`` both images are first rounded to 8-bit levels, which gives exactly what
the same metric computed on saved PNG files gives.

PSNR = 10 log₁₀(1 / MSE) per image, with the MSE floored at 1e-10 (so identical images give 100 dB, not ∞).
SSIM follows Wang et al. 2004 ("Image quality assessment: from error visibility to structural similarity",
eq. 13): an 11 × 11 Gaussian window with σ = 1.5, K₁ = 0.01, K₂ = 0.03, local statistics over the valid
region only (no padding), averaged over pixels and channels — the values scikit-image's
``structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)`` gives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ldmkit.errors import ConfigError

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
MSE_FLOOR = 1e-10


def _to_unit(images: torch.Tensor, quantize: bool) -> torch.Tensor:
    x = images.double() if images.dtype == torch.float64 else images.float()
    x = ((x + 1) / 2).clamp(0, 1)
    return (x * 255).round() / 255 if quantize else x


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape or x.ndim != 4:
        raise ConfigError(f"images to compare must both be [B, C, H, W] of one shape, got {list(x.shape)} and "
                          f"{list(y.shape)}")


def psnr(x: torch.Tensor, y: torch.Tensor, *, quantize: bool = False) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of each image pair, [B, C, H, W] in [-1, 1] → [B]."""
    _check_pair(x, y)
    a, b = _to_unit(x, quantize), _to_unit(y, quantize)
    mse = (a - b).pow(2).flatten(1).mean(dim=1).clamp_min(MSE_FLOOR)  # [B]
    return 10 * torch.log10(1 / mse)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, dtype: torch.dtype = torch.float32,
                    device: torch.device | None = None) -> torch.Tensor:
    """Normalised 1-d Gaussian taps [size]."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    taps = torch.exp(-(coords**2) / (2 * sigma**2))
    return (taps / taps.sum()).to(dtype=dtype, device=device)


def ssim(x: torch.Tensor, y: torch.Tensor, *, quantize: bool = False, window: int = SSIM_WINDOW,
         sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Structural similarity of each image pair, [B, C, H, W] in [-1, 1] → [B] (mean over channels and pixels)."""
    _check_pair(x, y)
    if min(x.shape[-2:]) < window:
        raise ConfigError(f"SSIM with an {window}x{window} window needs images of at least {window} px, "
                          f"got {x.shape[-2]}x{x.shape[-1]}")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    a, b = _to_unit(x, quantize).to(dtype), _to_unit(y, quantize).to(dtype)
    channels = a.shape[1]
    taps = gaussian_window(window, sigma, dtype, a.device)
    kernel_h = taps.view(1, 1, window, 1).repeat(channels, 1, 1, 1)
    kernel_w = taps.view(1, 1, 1, window).repeat(channels, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        # Separable Gaussian, valid region only: [B, C, H, W] → [B, C, H − w + 1, W − w + 1].
        return F.conv2d(F.conv2d(t, kernel_h, groups=channels), kernel_w, groups=channels)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # data range 1
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim_map.flatten(1).mean(dim=1)  # [B]


class ReconstructionMeter:
    """Running means of PSNR and SSIM over batches (e.g. a validation pass of the autoencoder)."""

    def __init__(self, quantize: bool = False):
        self.quantize = quantize
        self.count = 0
        self.psnr_sum = 0.0
        self.ssim_sum = 0.0

    @torch.no_grad()
    def update(self, images: torch.Tensor, reconstructions: torch.Tensor) -> None:
        self.psnr_sum += float(psnr(images, reconstructions, quantize=self.quantize).double().sum())
        self.ssim_sum += float(ssim(images, reconstructions, quantize=self.quantize).double().sum())
        self.count += images.shape[0]

    def compute(self) -> dict[str, float]:
        if self.count == 0:
            raise ConfigError("no reconstructions were measured")
        return {"psnr": self.psnr_sum / self.count, "ssim": self.ssim_sum / self.count}
