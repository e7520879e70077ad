"""Configuration of the first-stage autoencoders (paper §3.1, appendix G / Tab. 8 and 12).

One frozen dataclass describes all three kinds: ``kl`` (a small KL penalty towards N(0, I) on a diagonal
Gaussian posterior), ``vq`` (a vector-quantisation layer absorbed into the decoder) and ``identity``
(f = 1, the pixel-space baseline). The downsampling factor is ``f = 2^(len(channel_mult) - 1)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ldmkit.config import option
from ldmkit.errors import ConfigError


@dataclass(frozen=True)
class AutoencoderConfig:
    """Architecture and latent scaling of a first-stage autoencoder."""

    kind: Literal["kl", "vq", "identity"] = option(
        "kl", help="regulariser: 'kl' (KL-reg., §3.1), 'vq' (VQ-reg.) or 'identity' (f=1, pixel space)")
    in_channels: int = option(3, help="image channels fed to the encoder", min=1)
    out_channels: int = option(3, help="image channels produced by the decoder", min=1)
    base_channels: int = option(128, help="width of the first encoder level ('ch' in the LDM tables)", min=1)
    channel_mult: tuple[int, ...] = option(
        (1, 2, 4, 4), help="width multiplier per resolution level; f = 2^(len - 1)", min=1)
    num_res_blocks: int = option(2, help="ResNet blocks per level (the decoder uses one more)", min=1)
    mid_attention: bool = option(True, help="self-attention between the two ResNet blocks of the middle block")
    attention_factors: tuple[int, ...] = option(
        (), help="also attend at the levels whose downsampling factor is listed (e.g. [8] = 32 px of 256 px)", min=1)
    latent_channels: int = option(4, help="channels c of the latent z (h × w × c)", min=1)
    dropout: float = option(0.0, help="dropout inside the ResNet blocks", min=0.0, max=1.0)
    groups: int = option(32, help="at most this many GroupNorm groups (fewer when channels are not divisible)",
                         min=1)
    codebook_size: int = option(8192, help="VQ: number of codebook vectors", min=2)
    codebook_dim: int | None = option(
        None, help="VQ: dimension of a code; must equal latent_channels (null means latent_channels)", min=1)
    beta: float = option(0.25, help="VQ: commitment loss weight β (VQ-VAE)", min=0.0)
    ema: bool = option(False, help="VQ: update the codebook by exponential moving averages instead of gradients")
    ema_decay: float = option(0.99, help="VQ: decay of the codebook EMA and of the code-usage statistics",
                              min=0.0, max=1.0)
    dead_code_threshold: float = option(
        0.0, help="VQ: re-initialise codes whose EMA usage (assignments per batch) falls below this from "
                  "current encodings; 0 disables", min=0.0)
    scale_factor: float = option(
        1.0, help="latent scaling: encode() returns (z - shift_factor) * scale_factor; set to 1/std after training")
    shift_factor: float = option(0.0, help="latent shift subtracted before scaling (0 in the paper)")

    def __post_init__(self) -> None:
        if self.kind != "identity":
            if self.codebook_dim is not None and self.codebook_dim != self.latent_channels:
                raise ConfigError(
                    f"codebook_dim ({self.codebook_dim}) must equal latent_channels ({self.latent_channels}); "
                    "set codebook_dim to null")
            bad = [a for a in self.attention_factors if a not in self.level_factors]
            if bad:
                raise ConfigError(
                    f"attention_factors {list(bad)} name no level; the levels have factors {list(self.level_factors)}")
        if self.scale_factor == 0.0:
            raise ConfigError("scale_factor must not be 0; use 1/std of the latents (1.0 before it is measured)")

    @property
    def level_factors(self) -> tuple[int, ...]:
        """Downsampling factor of each encoder level: (1, 2, 4, …)."""
        return tuple(2**i for i in range(len(self.channel_mult)))

    @property
    def downsample_factor(self) -> int:
        """f = H / h."""
        return 1 if self.kind == "identity" else 2 ** (len(self.channel_mult) - 1)

    @property
    def z_channels(self) -> int:
        """Channels of the latent the diffusion model sees (the image channels for ``identity``)."""
        return self.in_channels if self.kind == "identity" else self.latent_channels
