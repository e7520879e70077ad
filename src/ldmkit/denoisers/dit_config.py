"""Configuration of the diffusion transformer (DiT, Peebles & Xie 2023) and the sizes of its Table 1."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ldmkit.config import named_preset, option
from ldmkit.errors import ConfigError


@dataclass(frozen=True)
class DiTConfig:
    """Architecture of :class:`ldmkit.denoisers.dit.DiT`: patchified latents, transformer blocks with adaLN-Zero."""

    in_channels: int = option(4, help="channels of the latent z_t (the autoencoder's latent channels)", min=1)
    out_channels: int = option(4, help="channels of the prediction (usually in_channels)", min=1)
    patch_size: int = option(2, help="side of the square latent patches that become tokens (DiT uses 2, 4, 8)",
                             min=1)
    hidden_size: int = option(384, help="token width D", min=1)
    depth: int = option(12, help="number of DiT blocks", min=1)
    num_heads: int = option(6, help="attention heads per block (hidden_size must divide by it)", min=1)
    mlp_ratio: float = option(4.0, help="width of the feed-forward layer / hidden_size", min=0.25)
    context_dim: int | None = option(
        None, help="width of the cross-attention tokens Conditioning.context (text); null = no cross-attention")
    vector_dim: int | None = option(
        None, help="width of Conditioning.vector (e.g. an embedded class label), added to the timestep embedding "
                   "that drives adaLN; null = no vector route", min=1)
    concat_channels: int = option(0, help="channels of Conditioning.concat, concatenated to z_t before "
                                          "patchifying (inpainting, super-resolution, semantic maps)", min=0)
    gradient_checkpointing: bool = option(False, help="recompute each block in the backward pass")

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"config key 'num_heads': hidden_size {self.hidden_size} cannot be split into "
                              f"{self.num_heads} heads; pick a divisor")
        if self.hidden_size % 4:
            raise ConfigError(f"config key 'hidden_size': {self.hidden_size} is not a multiple of 4 (the 2-D "
                              "sine-cosine position embedding gives a quarter of the width to each of its parts)")

    @property
    def downsample_factor(self) -> int:
        """Height and width of the input must be multiples of this (the patch size)."""
        return self.patch_size

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def preset(cls, name: str, **overrides) -> "DiTConfig":
        """``DiT-S/2``-style names (see :data:`DIT_PRESETS`), optionally with some fields replaced."""
        config = named_preset(DIT_PRESETS, name, "DiT")
        return dataclasses.replace(config, **overrides) if overrides else config


# Table 1 of the DiT paper: (depth, hidden size, heads) per model size; each with patch sizes 2, 4 and 8.
_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
DIT_PRESETS: dict[str, DiTConfig] = {
    f"DiT-{size}/{patch}": DiTConfig(depth=depth, hidden_size=width, num_heads=heads, patch_size=patch)
    for size, (depth, width, heads) in _SIZES.items() for patch in (2, 4, 8)
}

__all__ = ["DIT_PRESETS", "DiTConfig"]
