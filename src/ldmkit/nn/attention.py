"""Attention blocks: spatial self-attention and the cross-attention transformer of paper §3.3.

All attention goes through ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-
efficient kernels where the device has them), works for any number of tokens and has no
data-dependent Python control flow.

Cross-attention (paper eq. 3): ``Attention(Q, K, V) = softmax(Q Kᵀ / √d) V`` with
``Q = W_Q φ(z_t)``, ``K = W_K τ_θ(y)``, ``V = W_V τ_θ(y)``; ``SpatialTransformer`` flattens the UNet
feature map ``φ(z_t)`` into tokens, runs transformer blocks on it and reshapes back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ldmkit.nn.init import zero_module
from ldmkit.nn.norm import group_norm


def _heads(channels: int, num_heads: int, head_channels: int | None) -> int:
    """Number of heads from either a head count or a per-head width."""
    if head_channels is not None:
        if head_channels < 1 or channels % head_channels:
            raise ValueError(f"{channels} channels cannot be split into heads of {head_channels} channels")
        return channels // head_channels
    if num_heads < 1 or channels % num_heads:
        raise ValueError(f"{channels} channels cannot be split into {num_heads} heads")
    return num_heads


def _token_mask(context_mask: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``[B, T]`` bool (True = real token) → an SDPA mask ``[B, 1, 1, T]`` and a ``[B, 1, 1]`` keep factor.

    A sample whose tokens are all padding would make softmax divide by zero (NaN); for it the mask is
    opened (so SDPA stays finite) and the keep factor is 0, so the layer contributes nothing.
    """
    if context_mask is None:
        return None, None
    mask = context_mask.to(torch.bool)
    has_token = mask.any(dim=1)  # [B]
    safe = mask | ~has_token[:, None]  # [B, T]
    return safe[:, None, None, :], has_token[:, None, None]


#: Which samples of a batch perturbed-attention guidance perturbs: ``(first, period)`` marks sample i when
#: ``i % period >= first``: the last part of the guided batch, also when a wrapper stacks several copies of that
#: batch (tiles) into one call.
Identity = tuple[int, int]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
           identity: Identity | None = None) -> torch.Tensor:
    """Scaled dot-product attention of q, k, v [B, heads, N, d]. The samples ``identity`` marks use the identity
    attention map instead, each token keeping its own value: the perturbed part of perturbed-attention guidance
    (:mod:`ldmkit.samplers.pag`; self-attention only, so never with a mask)."""
    if identity is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    first, period = identity
    if q.shape[0] == period:  # the plain case: attend for the leading samples only
        return torch.cat([F.scaled_dot_product_attention(q[:first], k[:first], v[:first]), v[first:]])
    marked = (torch.arange(q.shape[0], device=q.device) % period >= first).view(-1, 1, 1, 1)
    return torch.where(marked, v, F.scaled_dot_product_attention(q, k, v))


class SpatialSelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, with a residual connection.

    ``x + proj_out(SDPA(qkv(GN(x))))``: GroupNorm, a 1×1 convolution to queries, keys and values,
    scaled dot-product attention among all ``H·W`` positions, a 1×1 output convolution. The output
    convolution is zero-initialised (ADM), so a fresh block is the identity.

    Args:
        channels: feature channels ``C``.
        num_heads: number of heads (ignored when ``head_channels`` is given).
        head_channels: channels per head; the head count is then ``C // head_channels``.
        groups: at most this many normalisation groups.
        eps: normalisation epsilon.
    """

    def __init__(self, channels: int, *, num_heads: int = 1, head_channels: int | None = None, groups: int = 32,
                 eps: float = 1e-6):
        super().__init__()
        self.channels = channels
        self.num_heads = _heads(channels, num_heads, head_channels)
        self.norm = group_norm(channels, groups, eps)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv2d(channels, channels, 1))
        self.identity: Identity | None = None  # perturbed-attention guidance (see attend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape  # [B, C, H, W]
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        # Channels last in memory: SDPA's memory-efficient and flash kernels need a unit stride over d, and
        # without one fall back to the math kernel and its [HW, HW] matrix (40 GB at a 2048² VAE decode).
        q, k, v = qkv.transpose(-1, -2).contiguous().unbind(dim=1)  # each [B, heads, HW, d]
        out = attend(q, k, v, identity=self.identity)  # [B, heads, HW, d]
        out = out.transpose(-1, -2).reshape(b, c, h, w)  # [B, C, H, W]
        return x + self.proj_out(out)


class CrossAttention(nn.Module):
    """Multi-head attention of tokens ``x`` over themselves (self) or over context tokens (cross).

    Self-attention (``context_dim=None``) uses one fused projection ``to_qkv``; cross-attention uses
    ``to_q`` on ``x`` and one fused ``to_kv`` on the context. Projections have no bias; ``to_out`` has.

    Args:
        query_dim: width of ``x``.
        context_dim: width of the context tokens; ``None`` makes this a self-attention layer.
        heads: number of heads.
        head_dim: width of one head (inner width ``heads * head_dim``).
        dropout: dropout on the output.
    """

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 8, head_dim: int = 64,
                 dropout: float = 0.0):
        super().__init__()
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.is_cross = context_dim is not None
        if self.is_cross:
            self.to_q = nn.Linear(query_dim, inner, bias=False)
            self.to_kv = nn.Linear(context_dim, 2 * inner, bias=False)
        else:
            self.to_qkv = nn.Linear(query_dim, 3 * inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))
        self.identity: Identity | None = None  # perturbed-attention guidance, self-attention only (see attend)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape  # [B, N, heads*d]
        return t.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)  # [B, heads, N, d]

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        # x: [B, N, query_dim]; context: [B, T, context_dim]; context_mask: [B, T] bool, True = real token
        keep = None
        attn_mask = None
        if self.is_cross:
            if context is None:
                raise ValueError("a cross-attention layer needs context tokens")
            q = self.to_q(x)  # [B, N, inner]
            k, v = self.to_kv(context).chunk(2, dim=-1)  # each [B, T, inner]
            attn_mask, keep = _token_mask(context_mask)
        else:
            if context is not None or context_mask is not None:
                raise ValueError("a self-attention layer takes no context; build it with context_dim")
            q, k, v = self.to_qkv(x).chunk(3, dim=-1)  # each [B, N, inner]
        out = attend(self._split(q), self._split(k), self._split(v), attn_mask=attn_mask,
                     identity=None if self.is_cross else self.identity)  # [B, heads, N, d]
        out = self.to_out(out.transpose(1, 2).flatten(2))  # [B, N, query_dim]
        if keep is not None:
            out = out * keep.to(out.dtype)
        return out


class FeedForward(nn.Module):
    """Transformer MLP with a GEGLU gate (Shazeer 2020): ``W_2 (a ⊙ GELU(g))``, ``[a, g] = W_1 x``.

    ``W_1`` is one fused projection to ``2 * mult * dim`` (value half first, gate half second).
    """

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0, dim_out: int | None = None):
        super().__init__()
        inner = dim * mult
        self.proj_in = nn.Linear(dim, 2 * inner)
        self.dropout = nn.Dropout(dropout)
        self.proj_out = nn.Linear(inner, dim_out or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, N, dim]
        value, gate = self.proj_in(x).chunk(2, dim=-1)  # each [B, N, inner]
        return self.proj_out(self.dropout(value * F.gelu(gate)))  # [B, N, dim_out]


class BasicTransformerBlock(nn.Module):
    """Pre-LayerNorm transformer block: self-attention, cross-attention, GEGLU feed-forward.

    ``x += attn1(LN(x)); x += attn2(LN(x), context); x += ff(LN(x))``. Without ``context_dim`` the
    cross-attention (and its norm) is left out. ``cross_only`` makes ``attn1`` attend to the context too
    (the ×4 upscaler's ``disable_self_attn``).
    """

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None = None, dropout: float = 0.0,
                 ff_mult: int = 4, cross_only: bool = False):
        super().__init__()
        if cross_only and context_dim is None:
            raise ValueError("a cross-attention-only transformer block needs context_dim")
        self.cross_only = cross_only
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = CrossAttention(dim, context_dim if cross_only else None, heads=heads, head_dim=head_dim,
                                    dropout=dropout)
        self.norm2 = nn.LayerNorm(dim) if context_dim is not None else None
        self.attn2 = (CrossAttention(dim, context_dim, heads=heads, head_dim=head_dim, dropout=dropout)
                      if context_dim is not None else None)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, mult=ff_mult, dropout=dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        # x: [B, N, dim]; context: [B, T, context_dim]; context_mask: [B, T]
        if self.cross_only:
            x = x + self.attn1(self.norm1(x), context, context_mask)
        else:
            x = x + self.attn1(self.norm1(x))
        if self.attn2 is not None:
            x = x + self.attn2(self.norm2(x), context, context_mask)
        elif context is not None:
            raise ValueError("this transformer block has no cross-attention (context_dim=None) but got context")
        return x + self.ff(self.norm3(x))  # [B, N, dim]


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map, conditioned by cross-attention (paper §3.3, Fig. 3).

    ``x + proj_out(blocks(proj_in(GN(x))))`` where the feature map ``[B, C, H, W]`` is read as ``H·W``
    tokens. ``proj_in`` / ``proj_out`` are linear layers (``use_linear=True``) or 1×1 convolutions (the
    Stable-Diffusion-1.x layout; same parameter count). ``proj_out`` is zero-initialised, so a fresh
    block is the identity.

    Args:
        channels: feature channels ``C``.
        heads, head_dim: attention heads and their width (inner width ``heads * head_dim``).
        depth: number of :class:`BasicTransformerBlock`.
        context_dim: width of the context tokens ``τ_θ(y)``; ``None`` for self-attention only.
        use_linear: linear projections in/out instead of 1×1 convolutions.
        dropout: dropout inside the blocks.
        cross_only: every block's first attention attends to the context instead of the pixels.
        groups: at most this many normalisation groups.
    """

    def __init__(self, channels: int, heads: int, head_dim: int, depth: int = 1, context_dim: int | None = None,
                 use_linear: bool = True, dropout: float = 0.0, groups: int = 32, cross_only: bool = False):
        super().__init__()
        inner = heads * head_dim
        self.use_linear = use_linear
        self.norm = group_norm(channels, groups, 1e-6)
        if use_linear:
            self.proj_in = nn.Linear(channels, inner)
            self.proj_out = zero_module(nn.Linear(inner, channels))
        else:
            self.proj_in = nn.Conv2d(channels, inner, 1)
            self.proj_out = zero_module(nn.Conv2d(inner, channels, 1))
        self.blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, head_dim, context_dim, dropout=dropout, cross_only=cross_only)
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape  # [B, C, H, W]
        hid = self.norm(x)
        if self.use_linear:
            hid = self.proj_in(hid.flatten(2).transpose(1, 2))  # [B, HW, inner]
        else:
            hid = self.proj_in(hid).flatten(2).transpose(1, 2)  # [B, HW, inner]
        for block in self.blocks:
            hid = block(hid, context, context_mask)  # [B, HW, inner]
        if self.use_linear:
            hid = self.proj_out(hid).transpose(1, 2).reshape(b, c, h, w)  # [B, C, H, W]
        else:
            hid = self.proj_out(hid.transpose(1, 2).reshape(b, -1, h, w))  # [B, C, H, W]
        return x + hid
