"""The diffusion transformer (DiT, Peebles & Xie, "Scalable Diffusion Models with Transformers", ICCV 2023).

The latent z_t [B, C, H, W] is cut into p × p patches that become N = HW/p² tokens of width D with fixed 2-D
sine-cosine positions (computed for any grid, so it samples at sizes other than trained). Each block is
adaLN-Zero (§3.2): the timestep embedding plus the vector route (an embedded class label) regresses a shift,
scale and gate for the attention and the MLP; the gates start at zero, so a fresh block is the identity.
Context tokens (text) enter by cross-attention after the self-attention (the "cross-attention block" of
§3.2); concat routes are stacked on z_t before patchifying. ``forward(x, t, cond)`` is the UNet's.
"""

from __future__ import annotations


import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ldmkit.conditioning.types import Conditioning
from ldmkit.denoisers.dit_config import DiTConfig
from ldmkit.denoisers.routes import network_inputs
from ldmkit.nn import CrossAttention, TimestepEmbedding

TIMESTEP_FREQUENCIES = 256  # sinusoidal features of t, as in the DiT reference


def sincos_positions(height: int, width: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """[height·width, dim] fixed 2-D position embedding: the first half encodes the row, the second the column,
    each as [sin, cos] of the index at dim/4 frequencies (DiT / MAE)."""
    quarter = dim // 4
    freqs = 1.0 / 10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter)  # [D/4]
    rows = torch.arange(height, device=device, dtype=torch.float32)[:, None] * freqs  # [H, D/4]
    cols = torch.arange(width, device=device, dtype=torch.float32)[:, None] * freqs  # [W, D/4]
    row = torch.cat([rows.sin(), rows.cos()], dim=-1)[:, None, :].expand(height, width, 2 * quarter)
    col = torch.cat([cols.sin(), cols.cos()], dim=-1)[None, :, :].expand(height, width, 2 * quarter)
    return torch.cat([row, col], dim=-1).reshape(height * width, 4 * quarter)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x · (1 + scale) + shift`` with per-sample shift and scale [B, 1, D] over tokens [B, N, D]."""
    return x * (1 + scale) + shift


class DiTBlock(nn.Module):
    """``x += g₁ · attn(adaLN(x)); [x += cross(LN(x), context)]; x += g₂ · mlp(adaLN(x))`` (adaLN-Zero)."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        dim = config.hidden_size
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = CrossAttention(dim, None, heads=config.num_heads, head_dim=config.head_dim)
        self.cross = None
        if config.context_dim is not None:
            self.norm_cross = nn.LayerNorm(dim, eps=1e-6)
            self.cross = CrossAttention(dim, config.context_dim, heads=config.num_heads, head_dim=config.head_dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * config.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor, context: torch.Tensor | None,
                mask: torch.Tensor | None) -> torch.Tensor:
        # x: [B, N, D]; c: [B, D] (timestep + vector); context: [B, T, D_ctx]; mask: [B, T]
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c)[:, None].chunk(6, dim=-1)  # [B, 1, D]
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1))
        if self.cross is not None:
            x = x + self.cross(self.norm_cross(x), context, mask)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))  # [B, N, D]


class DiT(nn.Module):
    """ε_θ(z_t, t, c) as a transformer: ``forward(x [B, C, h, w], t [B], cond) -> [B, out_channels, h, w]``."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        c, dim, p = config, config.hidden_size, config.patch_size
        self.patch_embed = nn.Conv2d(c.in_channels + c.concat_channels, dim, p, stride=p)
        self.time_embed = TimestepEmbedding(TIMESTEP_FREQUENCIES, dim)
        self.vector_proj = nn.Linear(c.vector_dim, dim) if c.vector_dim is not None else None
        self.blocks = nn.ModuleList(DiTBlock(config) for _ in range(c.depth))
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.modulation_out = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.proj_out = nn.Linear(dim, p * p * c.out_channels)
        self._initialise()

    def _initialise(self) -> None:
        """DiT's initialisation: Xavier-uniform linears (and the patch projection as one), N(0, 0.02) for the
        timestep MLP, and zeros for every adaLN regression, each cross-attention output and the output layer,
        so a fresh DiT predicts 0 and each fresh block is the identity."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        weight = self.patch_embed.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        for layer in (self.time_embed.linear_1, self.time_embed.linear_2):
            nn.init.normal_(layer.weight, std=0.02)
        zeroed = [self.modulation_out[-1], self.proj_out]
        for block in self.blocks:
            zeroed.append(block.modulation[-1])
            if block.cross is not None:
                zeroed.append(block.cross.to_out[0])
        for layer in zeroed:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        # x: [B, C, h, w]; t: [B] or []; cond routes as for the UNet
        cond = Conditioning() if cond is None else cond
        h, vector = network_inputs(self.config, x, cond, "DiT")  # [B, C + C_cat, h, w]
        b, _, height, width = h.shape
        p = self.config.patch_size
        tokens = self.patch_embed(h).flatten(2).transpose(1, 2)  # [B, N, D], N = (h/p)(w/p)
        positions = sincos_positions(height // p, width // p, self.config.hidden_size, tokens.device)
        tokens = tokens + positions.to(tokens.dtype)
        if t.ndim == 0:
            t = t.expand(b)
        c = self.time_embed(t)  # [B, D]
        if self.vector_proj is not None:
            c = c + self.vector_proj(vector.to(c.dtype))
        for block in self.blocks:
            if self.config.gradient_checkpointing and self.training and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, c, cond.context, cond.context_mask, use_reentrant=False)
            else:
                tokens = block(tokens, c, cond.context, cond.context_mask)
        shift, scale = self.modulation_out(c)[:, None].chunk(2, dim=-1)  # [B, 1, D]
        out = self.proj_out(modulate(self.norm_out(tokens), shift, scale))  # [B, N, p·p·C_out]
        return self.unpatchify(out, height // p, width // p)

    def unpatchify(self, tokens: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """[B, rows·cols, p·p·C] → [B, C, rows·p, cols·p] (the patch's pixels in row-major order, then channel)."""
        b, p, channels = tokens.shape[0], self.config.patch_size, self.config.out_channels
        grid = tokens.reshape(b, rows, cols, p, p, channels)
        return grid.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, rows * p, cols * p)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "DiT":
        return cls(DiTConfig.preset(name, **overrides))


def parameter_count(config: DiTConfig) -> int:
    """Parameters of a DiT of ``config``, counted on the meta device (nothing allocated)."""
    with torch.device("meta"):
        return sum(p.numel() for p in DiT(config).parameters())


__all__ = ["DiT", "DiTBlock", "modulate", "parameter_count", "sincos_positions"]
