"""Denoising networks (paper §3.2): the UNet ε_θ(z_t, t, c) and the diffusion transformer (DiT)."""

from ldmkit.denoisers.dit import DiT
from ldmkit.denoisers.dit_config import DIT_PRESETS, DiTConfig
from ldmkit.denoisers.unet import UNet
from ldmkit.denoisers.unet_config import UNET_PRESETS, UNetConfig

__all__ = ["DIT_PRESETS", "DiT", "DiTConfig", "UNET_PRESETS", "UNet", "UNetConfig"]
