"""Text encoder trained from scratch with the denoiser (paper §3.3, §4.3.1).

The LDM text-to-image model conditions on a transformer over the caption's tokens whose per-token outputs
feed the UNet's cross-attention. Here: a word-level tokenizer built from the training captions, learned
token and positional embeddings, pre-LN transformer blocks (scaled dot-product attention with the padding
mask), a final LayerNorm and a projection to ``embed_dim``. The null condition is the empty caption, which
the network learns through condition dropout.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from ldmkit.conditioning.base import CaptionConditioner
from ldmkit.conditioning.concat import ImageEncoder
from ldmkit.conditioning.config import ConditionerConfig
from ldmkit.conditioning.tokenizer import WordTokenizer
from ldmkit.conditioning.types import Conditioning
from ldmkit.errors import CheckpointError


class TransformerBlock(nn.Module):
    """Pre-LN self-attention block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, w = x.shape  # x: [B, T, W], mask: [B, T] (True = real token)
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        # q, k, v: [B, H, T, W/H]; padding keys are masked out (every row has a real [BOS] key).
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])  # [B, H, T, W/H]
        x = x + self.proj(attn.transpose(1, 2).reshape(b, t, w))  # [B, T, W]
        return x + self.mlp(self.norm2(x))  # [B, T, W]


class TextTransformer(nn.Module):
    """Token ids [B, T] → per-token features [B, T, D], zero at padding positions."""

    def __init__(self, vocab_size: int, max_length: int, width: int, depth: int, heads: int,
                 mlp_ratio: int = 4, out_dim: int | None = None):
        super().__init__()
        self.max_length = max_length
        self.token = nn.Embedding(vocab_size, width)
        self.position = nn.Parameter(torch.zeros(max_length, width))
        self.blocks = nn.ModuleList(TransformerBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, out_dim) if out_dim is not None and out_dim != width else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.token.weight, std=0.02)
        nn.init.normal_(self.position, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]  # ids, mask: [B, T]
        x = self.token(ids) + self.position[:t]  # [B, T, W]
        for block in self.blocks:
            x = block(x, mask)  # [B, T, W]
        x = self.out(self.norm(x))  # [B, T, D]
        return x * mask[..., None].to(x.dtype)  # [B, T, D], padding zeroed


class TextConditioner(CaptionConditioner):
    """``kind: text``: caption → ``context`` [B, T, embed_dim] + ``context_mask`` [B, T]."""

    trainable = True

    def __init__(self, config: ConditionerConfig, tokenizer: WordTokenizer,
                 first_stage: ImageEncoder | None = None):
        super().__init__(config, first_stage)
        text = config.text
        if tokenizer.max_length > text.max_length:
            raise CheckpointError(f"tokenizer max_length {tokenizer.max_length} exceeds text.max_length "
                                  f"{text.max_length} of the config")
        self.tokenizer = tokenizer
        self.encoder = TextTransformer(tokenizer.vocab_size, text.max_length, text.width, text.depth, text.heads,
                                       text.mlp_ratio, out_dim=config.embed_dim)

    def _encode_texts(self, prompts: list[str]) -> Conditioning:
        ids, mask = self.tokenizer(prompts, device=self.encoder.position.device)  # [B, T], [B, T]
        return Conditioning(context=self.encoder(ids, mask), context_mask=mask)  # [B, T, D]

    def null(self, batch_size: int, device: torch.device | str | None = None) -> Conditioning:
        cond = self.encode_prompts([""] * batch_size)
        return cond.to(device) if device is not None else cond

    def state_for_saving(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors, data = super().state_for_saving()
        data["tokenizer"] = self.tokenizer.to_dict()
        return tensors, data
