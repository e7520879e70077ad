"""Denoising networks (paper §3.2): the UNet ε_θ(z_t, t, c)."""

from ldmkit.denoisers.unet import UNet
from ldmkit.denoisers.unet_config import UNET_PRESETS, UNetConfig

__all__ = ["UNET_PRESETS", "UNet", "UNetConfig"]
