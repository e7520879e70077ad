"""Configuration of the UNet denoiser ε_θ(z_t, t, c) (paper §3.2, §3.3) and its named presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ldmkit.config import named_preset, option
from ldmkit.errors import ConfigError


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of :class:`ldmkit.denoisers.unet.UNet` (ADM-style, with LDM's cross-attention)."""

    in_channels: int = option(4, help="channels of the latent z_t (the autoencoder's latent channels)", min=1)
    out_channels: int = option(4, help="channels of the prediction (usually in_channels)", min=1)
    model_channels: int = option(128, help="width of the first level; level i has model_channels * channel_mult[i]",
                                 min=1)
    channel_mult: tuple[int, ...] = option((1, 2, 4), help="width multiplier per level; len-1 downsamplings", min=1)
    num_res_blocks: int = option(2, help="residual blocks per level in the encoder (decoder has one more)", min=1)
    attention_resolutions: tuple[int, ...] = option(
        (4, 2), help="downsampling factors (1 = input size, 2 = half, ...) at which attention blocks follow "
                     "each residual block (LDM-code convention, not pixel sizes); the middle always has one", min=1)
    num_heads: int = option(8, help="attention heads per block (used when num_head_channels is null)", min=1)
    num_head_channels: int | None = option(
        None, help="channels per attention head; when set, the head count is width // num_head_channels "
                   "and num_heads is ignored", min=1)
    transformer_depth: int = option(1, help="transformer blocks inside each SpatialTransformer", min=1)
    context_dim: int | None = option(
        None, help="width of the cross-attention tokens Conditioning.context (paper §3.3); null = plain "
                   "self-attention blocks and no context route", min=1)
    use_linear_in_transformer: bool = option(
        True, help="linear proj_in/proj_out in SpatialTransformer (false: 1x1 convolutions, as in SD-1.x)")
    vector_dim: int | None = option(
        None, help="width of Conditioning.vector (e.g. an embedded class label), projected linearly and added "
                   "to the timestep embedding; null = no vector route", min=1)
    concat_channels: int = option(
        0, help="channels of Conditioning.concat, concatenated to z_t at the input (inpainting mask + masked "
                "image, low-resolution image, semantic map); 0 = no concat route", min=0)
    dropout: float = option(0.0, help="dropout probability inside residual blocks", min=0.0, max=1.0)
    resblock_updown: bool = option(False, help="resample with residual blocks instead of plain (conv) layers")
    use_scale_shift_norm: bool = option(
        False, help="inject the timestep embedding as FiLM scale and shift after the norm (ADM) instead of "
                    "adding it")
    gradient_checkpointing: bool = option(
        False, help="recompute block activations in the backward pass (less memory, one more forward of each block)")
    guidance_embed: bool = option(
        False, help="take the guidance scale w as an input (Conditioning.guidance), embedded like the timestep and "
                    "added to its embedding: a guidance-distilled student (LCM); starts at zero")
    size_embed: bool = option(
        False, help="take Conditioning.sizes [B, 6] (original size, crop corner, output size; SDXL micro-"
                    "conditioning), embedded with sinusoidal features and an MLP and added to the timestep "
                    "embedding; starts at zero (set by conditioner.size_conditioning)")
    conv_resample: bool = option(True, help="3x3 convolutions in Downsample/Upsample (false: avg-pool / nearest only)")
    # Options that Stable Diffusion checkpoints need; their defaults keep the network above unchanged.
    norm_groups: int | None = option(
        None, help="GroupNorm groups of every norm (32 in Stable Diffusion and diffusers, whatever the width); "
                   "null = at most 32 and at least 4 channels per group", min=1)
    class_embeddings: int | None = option(
        None, help="rows of a learned table indexed by integer labels in Conditioning.vector [B] and added to the "
                   "timestep embedding (the x4 upscaler's noise level; diffusers num_class_embeds); null = none",
        min=1)
    cross_attention_only: tuple[bool, ...] = option(
        (), help="per level: true makes the first attention of each transformer block attend to the context "
                 "instead of the pixels (the x4 upscaler's disable_self_attentions); empty = false everywhere")

    def __post_init__(self) -> None:
        levels = len(self.channel_mult)
        if levels == 0:
            raise ConfigError("config key 'channel_mult' is empty; give at least one level, e.g. [1, 2, 4]")
        if self.cross_attention_only and len(self.cross_attention_only) != levels:
            raise ConfigError(f"config key 'cross_attention_only' has {len(self.cross_attention_only)} entries; "
                              f"give one per level ({levels}) or none")
        if any(self.cross_attention_only) and self.context_dim is None:
            raise ConfigError("config key 'cross_attention_only' needs context_dim: there is no context to attend to")
        if self.class_embeddings is not None and self.vector_dim is not None:
            raise ConfigError("config keys 'class_embeddings' and 'vector_dim' both use Conditioning.vector; "
                              "set only one")
        if self.norm_groups is not None:
            for width in {self.model_channels * m for m in self.channel_mult}:
                if width % self.norm_groups:
                    raise ConfigError(f"config key 'norm_groups': {width} channels cannot be split into "
                                      f"{self.norm_groups} groups; pick a divisor or null")
        reachable = {2**i for i in range(levels)}
        for factor in self.attention_resolutions:
            if factor not in reachable:
                raise ConfigError(
                    f"config key 'attention_resolutions': {factor} is not a downsampling factor of this UNet "
                    f"(with {levels} levels: {sorted(reachable)}); give factors, not pixel sizes")
        for width in self.attention_widths():
            if self.num_head_channels is not None and width % self.num_head_channels:
                raise ConfigError(f"config key 'num_head_channels': {width} channels of an attention block cannot "
                                  f"be split into heads of {self.num_head_channels}; pick a divisor")
            if self.num_head_channels is None and width % self.num_heads:
                raise ConfigError(f"config key 'num_heads': {width} channels of an attention block cannot be "
                                  f"split into {self.num_heads} heads; pick a divisor or set num_head_channels")

    @property
    def downsample_factor(self) -> int:
        """Height and width of the input must be multiples of this (2 ** (levels - 1))."""
        return 2 ** (len(self.channel_mult) - 1)

    def attention_widths(self) -> list[int]:
        """Channel counts of all attention blocks (the levels in attention_resolutions and the middle)."""
        widths = [self.model_channels * m for i, m in enumerate(self.channel_mult)
                  if 2**i in self.attention_resolutions]
        return widths + [self.model_channels * self.channel_mult[-1]]

    def heads(self, width: int) -> tuple[int, int]:
        """(number of heads, channels per head) of an attention block of ``width`` channels."""
        if self.num_head_channels is not None:
            return width // self.num_head_channels, self.num_head_channels
        return self.num_heads, width // self.num_heads

    @classmethod
    def preset(cls, name: str, **overrides) -> "UNetConfig":
        """A named configuration (see :data:`UNET_PRESETS`), optionally with some fields replaced."""
        config = named_preset(UNET_PRESETS, name, "UNet")
        return dataclasses.replace(config, **overrides) if overrides else config


UNET_PRESETS: dict[str, UNetConfig] = {
    # Stable Diffusion 1.x (text-to-image on 64x64x4 KL-f8 latents, CLIP ViT-L/14 tokens of width 768):
    # 859,520,964 parameters, the same count as diffusers' UNet2DConditionModel in this configuration.
    "sd1": UNetConfig(
        in_channels=4, out_channels=4, model_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=2,
        attention_resolutions=(4, 2, 1), num_heads=8, transformer_depth=1, context_dim=768,
        use_linear_in_transformer=False),
    # Paper Tab. 12, CelebA-HQ / FFHQ 256², unconditional LDM-4 on 64x64x3 VQ-f4 latents
    # (configs/latent-diffusion/celebahq-ldm-vq-4.yaml of the reference code).
    "ldm4-celebahq": UNetConfig(
        in_channels=3, out_channels=3, model_channels=224, channel_mult=(1, 2, 3, 4), num_res_blocks=2,
        attention_resolutions=(8, 4, 2), num_head_channels=32),
    # Paper Tab. 15 / §4.3.1, class-conditional ImageNet 256² LDM-4 on 64x64x3 VQ-f4 latents: the class
    # label reaches the UNet as one 512-wide cross-attention token (reference cin256-v2.yaml).
    "ldm4-cin": UNetConfig(
        in_channels=3, out_channels=3, model_channels=192, channel_mult=(1, 2, 3, 5), num_res_blocks=2,
        attention_resolutions=(8, 4, 2), num_heads=1, transformer_depth=1, context_dim=512),
    # Paper Tab. 12, LSUN-Churches 256², unconditional LDM-8 on 32x32x4 KL-f8 latents
    # (reference lsun_churches-ldm-kl-8.yaml).
    "ldm8-churches": UNetConfig(
        in_channels=4, out_channels=4, model_channels=192, channel_mult=(1, 2, 2, 4, 4), num_res_blocks=2,
        attention_resolutions=(1, 2, 4, 8), num_heads=8, use_scale_shift_norm=True, resblock_updown=True),
    # Paper §4.1 compression study, class-conditional ImageNet LDM-8 on 32x32x4 VQ-f8 latents
    # (reference cin-ldm-vq-f8.yaml).
    "ldm8-cin": UNetConfig(
        in_channels=4, out_channels=4, model_channels=256, channel_mult=(1, 2, 4), num_res_blocks=2,
        attention_resolutions=(4, 2, 1), num_head_channels=32, transformer_depth=1, context_dim=512),
    # Tiny models for tests and CPU smoke runs (a few hundred thousand parameters at most).
    "tiny": UNetConfig(
        in_channels=4, out_channels=4, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
        attention_resolutions=(2,), num_head_channels=8),
    "tiny-cond": UNetConfig(
        in_channels=4, out_channels=4, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
        attention_resolutions=(1, 2), num_heads=2, context_dim=12, vector_dim=6, concat_channels=2),
}
