"""Configuration of the frozen CLIP text encoders of Stable Diffusion (``kind: clip_text``).

The network is ``transformers.CLIPTextModel``; its states after the final layer norm are the cross-attention
context. For OpenCLIP ViT-H/14 (SD 2.x uses its penultimate layer) the model holds 23 of the 24 layers, so
its last hidden states are that penultimate layer after the final norm, as in diffusers' SD 2.x folders.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from ldmkit.config import option
from ldmkit.errors import ConfigError


@dataclass(frozen=True)
class ClipTextConfig:
    """Architecture and tokenisation of a CLIP text tower (defaults: CLIP ViT-L/14 of SD 1.x)."""

    family: Literal["clip-l", "openclip-h", "custom"] = option(
        "clip-l", help="clip-l (CLIP ViT-L/14, SD 1.x), openclip-h (OpenCLIP ViT-H/14, SD 2.x) or custom")
    width: int = option(768, help="hidden size = width of the context tokens", min=8)
    layers: int = option(12, help="transformer layers kept (OpenCLIP-H: 23 of 24, the penultimate is used)", min=1)
    heads: int = option(12, help="attention heads", min=1)
    mlp_width: int = option(3072, help="hidden size of each layer's MLP", min=1)
    activation: Literal["quick_gelu", "gelu"] = option("quick_gelu", help="MLP activation (CLIP: quick_gelu, "
                                                                          "OpenCLIP: gelu)")
    vocab_size: int = option(49408, help="tokens of the BPE vocabulary", min=2)
    max_length: int = option(77, help="tokens per prompt including start and end; prompts are padded to it", min=2)
    pad_token: str = option("<|endoftext|>", help="padding token: <|endoftext|> for SD 1.x, ! for SD 2.x")
    tokenizer: str = option("clip-vocab", help="asset (`ldm assets fetch clip-vocab`) or folder holding vocab.json + "
                                               "merges.txt")
    vector_label: int | None = option(
        None, help="a constant integer label sent as Conditioning.vector (the x4 upscaler's noise level, 0 = a "
                   "clean low-resolution image); null = no vector", min=0)

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ConfigError(f"clip.width {self.width} is not divisible by clip.heads {self.heads}")


CLIP_FAMILIES: dict[str, ClipTextConfig] = {
    "clip-l": ClipTextConfig(),
    "openclip-h": ClipTextConfig(family="openclip-h", width=1024, layers=23, heads=16, mlp_width=4096,
                                 activation="gelu", pad_token="!"),
}


def clip_family(name: str, **overrides) -> ClipTextConfig:
    return dataclasses.replace(CLIP_FAMILIES[name], **overrides)
