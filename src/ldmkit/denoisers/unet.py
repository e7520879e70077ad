"""The time-conditional UNet ε_θ(z_t, t, c) of latent diffusion (paper §3.2, §3.3, Fig. 3).

An ADM-style encoder / middle / decoder (Dhariwal & Nichol 2021) with skip connections, residual
blocks that take the timestep embedding, and attention blocks at chosen downsampling factors. With a
``context_dim`` the attention blocks are :class:`~ldmkit.nn.SpatialTransformer` layers that
cross-attend to ``Conditioning.context`` (paper eq. 3); without one they are plain spatial
self-attention. Two more routes bring conditions in: ``Conditioning.vector`` is projected and added to
the timestep embedding, ``Conditioning.concat`` is concatenated to ``z_t`` at the input.

The UNet only maps ``(z_t, t, c)`` to a tensor of ``out_channels``; what that tensor means (ε, v or x₀)
is the business of the parameterisation wrapper, and it never sees the noise schedule.

The output convolution is zero-initialised, so a freshly built UNet returns exactly zero for every
input; every residual and attention branch is zero-initialised too (their blocks start as the
identity), which keeps early training stable.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ldmkit.conditioning.types import Conditioning
from ldmkit.denoisers.routes import network_inputs
from ldmkit.denoisers.unet_config import UNET_PRESETS, UNetConfig
from ldmkit.errors import ConfigError
from ldmkit.nn import (
    Downsample,
    ResnetBlock,
    SizeEmbedding,
    SpatialSelfAttention,
    SpatialTransformer,
    TimestepEmbedding,
    Upsample,
    group_norm,
    zero_module,
)

__all__ = ["UNET_PRESETS", "UNet", "UNetConfig"]

_NORM_EPS = 1e-5  # GroupNorm epsilon of the UNet's residual and self-attention blocks (as in LDM / SD)


def _groups(width: int) -> int:
    """At most 32 normalisation groups and at least 4 channels per group.

    With one channel per group (what ``group_norm`` would pick for tiny test widths) the norm that
    follows the added timestep embedding would subtract it again, since it is constant per channel.
    Every width of 128 or more gets the usual 32 groups.
    """
    return max(1, min(32, width // 4))


class UNetStage(nn.ModuleList):
    """A few layers run in sequence, each given what it needs (embedding, context or nothing)."""

    def forward(self, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None,
                context_mask: torch.Tensor | None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResnetBlock):
                h = layer(h, emb)
            elif isinstance(layer, SpatialTransformer):
                h = layer(h, context, context_mask)
            else:
                h = layer(h)
        return h


GUIDANCE_SCALE = 1000.0  # w is embedded as the timestep 1000·w (LCM's w-embedding)


class UNet(nn.Module):
    """ε_θ(z_t, t, c): ``forward(x [B, C, h, w], t [B], cond) -> [B, out_channels, h, w]``.

    ``h`` and ``w`` may be any multiples of ``config.downsample_factor`` (convolutional sampling at
    larger sizes than trained, paper §4.3.2). ``t`` holds integer or fractional timesteps (or noise
    levels, as the wrapper decides), one per sample or a single scalar for the whole batch.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        c = config
        mc = c.model_channels
        emb_dim = 4 * mc
        self.time_embed = TimestepEmbedding(mc, emb_dim)
        self.vector_proj = nn.Linear(c.vector_dim, emb_dim) if c.vector_dim is not None else None
        if c.guidance_embed:  # w → sinusoidal features of 1000·w → MLP, zero at first so a student starts as its teacher
            self.guidance_embedding = TimestepEmbedding(mc, emb_dim)
            zero_module(self.guidance_embedding.linear_2)
        if c.size_embed:  # original size, crop corner, output size → sinusoidal features → MLP, zero at first
            self.size_embedding = SizeEmbedding(mc, emb_dim)
        if c.class_embeddings is not None:  # integer labels → rows of a table [class_embeddings, 4*mc]
            self.class_embed = nn.Embedding(c.class_embeddings, emb_dim)
        self.conv_in = nn.Conv2d(c.in_channels + c.concat_channels, mc, 3, padding=1)

        # Encoder: per level, num_res_blocks × (ResnetBlock [+ attention]), then a downsampling stage.
        self.down = nn.ModuleList()
        skip_widths = [mc]
        width, factor = mc, 1
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                stage = UNetStage([self._resnet(width, mc * mult)])
                width = mc * mult
                if factor in c.attention_resolutions:
                    stage.append(self._attention(width, level))
                self.down.append(stage)
                skip_widths.append(width)
            if level != len(c.channel_mult) - 1:
                if c.resblock_updown:
                    self.down.append(UNetStage([self._resnet(width, width, resample="down")]))
                else:
                    self.down.append(UNetStage([Downsample(width, use_conv=c.conv_resample)]))
                skip_widths.append(width)
                factor *= 2

        self.middle = UNetStage([self._resnet(width, width), self._attention(width), self._resnet(width, width)])

        # Decoder: per level (deepest first), num_res_blocks + 1 × (ResnetBlock on [h, skip] [+ attention]),
        # the last of them followed by upsampling except at the top level.
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(c.num_res_blocks + 1):
                stage = UNetStage([self._resnet(width + skip_widths.pop(), mc * mult)])
                width = mc * mult
                if factor in c.attention_resolutions:
                    stage.append(self._attention(width, level))
                if level and i == c.num_res_blocks:
                    if c.resblock_updown:
                        stage.append(self._resnet(width, width, resample="up"))
                    else:
                        stage.append(Upsample(width, use_conv=c.conv_resample))
                    factor //= 2
                self.up.append(stage)

        self.norm_out = group_norm(width, self._groups(width), _NORM_EPS)
        self.act_out = nn.SiLU()
        self.conv_out = zero_module(nn.Conv2d(width, c.out_channels, 3, padding=1))

    def _resnet(self, cin: int, cout: int, resample: str = "none") -> ResnetBlock:
        c = self.config
        return ResnetBlock(cin, cout, emb_channels=4 * c.model_channels, dropout=c.dropout,
                           scale_shift=c.use_scale_shift_norm, groups=self._groups(min(cin, cout)), eps=_NORM_EPS,
                           resample=resample)

    def _groups(self, width: int) -> int:
        return self.config.norm_groups or _groups(width)

    def _attention(self, width: int, level: int | None = None) -> nn.Module:
        """The attention block of a level (``level=None``: the middle, which always attends to its pixels)."""
        c = self.config
        heads, head_dim = c.heads(width)
        if c.context_dim is None:
            return SpatialSelfAttention(width, num_heads=heads, groups=self._groups(width), eps=_NORM_EPS)
        cross_only = level is not None and bool(c.cross_attention_only) and c.cross_attention_only[level]
        return SpatialTransformer(width, heads, head_dim, depth=c.transformer_depth, context_dim=c.context_dim,
                                  use_linear=c.use_linear_in_transformer, groups=self._groups(width),
                                  cross_only=cross_only)

    def _class_labels(self, x: torch.Tensor, cond: Conditioning) -> tuple[torch.Tensor, Conditioning]:
        """Integer labels [B] of ``cond.vector`` for the class table, and ``cond`` without them."""
        v, n = cond.vector, self.config.class_embeddings
        if v is None or v.shape != (x.shape[0],) or v.is_floating_point() or v.is_complex():
            got = "none" if v is None else f"{list(v.shape)} {v.dtype}"
            raise ConfigError(f"this UNet looks up integer labels Conditioning.vector [{x.shape[0]}] in a table of "
                              f"{n} (config key class_embeddings); got {got}")
        return v, dataclasses.replace(cond, vector=None)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "UNet":
        """Build the UNet of a named configuration (see :data:`UNET_PRESETS`)."""
        return cls(UNetConfig.preset(name, **overrides))

    def _run(self, stage: UNetStage, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None,
             mask: torch.Tensor | None) -> torch.Tensor:
        if self.config.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(stage, h, emb, context, mask, use_reentrant=False)
        return stage(h, emb, context, mask)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        # x: [B, C, h, w]; t: [B] or []; cond routes: context [B, T, D], context_mask [B, T],
        # vector [B, V], concat [B, C_cat, h, w]
        cond = Conditioning() if cond is None else cond
        labels = None
        if self.config.class_embeddings is not None:
            labels, cond = self._class_labels(x, cond)  # [B] integers
        h, vector = network_inputs(self.config, x, cond, "UNet")  # [B, C + C_cat, h, w]
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embed(t)  # [B, 4*mc]
        if self.vector_proj is not None:
            emb = emb + self.vector_proj(vector.to(emb.dtype))  # [B, 4*mc]
        if labels is not None:
            emb = emb + self.class_embed(labels).to(emb.dtype)  # [B, 4*mc]
        if self.config.guidance_embed:
            emb = emb + self.guidance_embedding(GUIDANCE_SCALE * cond.guidance.float()).to(emb.dtype)  # [B, 4*mc]
        if self.config.size_embed:
            emb = emb + self.size_embedding(cond.sizes.float()).to(emb.dtype)  # [B, 4*mc]
        context, mask = cond.context, cond.context_mask

        h = self.conv_in(h)  # [B, mc, h, w]
        skips = [h]
        for stage in self.down:
            h = self._run(stage, h, emb, context, mask)  # [B, C_level, h/f, w/f]
            skips.append(h)
        h = self._run(self.middle, h, emb, context, mask)  # [B, C_deep, h/F, w/F]
        for stage in self.up:
            h = torch.cat([h, skips.pop()], dim=1)  # [B, C + C_skip, h/f, w/f]
            h = self._run(stage, h, emb, context, mask)
        return self.conv_out(self.act_out(self.norm_out(h)))  # [B, out_channels, h, w]
