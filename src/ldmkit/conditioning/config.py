"""Configuration of the conditioning encoders τ_θ (paper §3.3).

One :class:`ConditionerConfig` describes what the denoiser is conditioned on:

- ``kind`` picks the main route: nothing, a class label (``vector``), a caption encoded by a small
  transformer trained jointly with the UNet (``context``), or a caption encoded by the frozen
  pretrained MiniLM (``context``);
- ``concat`` optionally adds an image-like condition brought to the latent grid and concatenated to the
  UNet input (inpainting, super-resolution, semantic synthesis);
- ``drop_prob`` is the probability with which the main condition is replaced by the null condition
  during training, so that one network learns both p(z|y) and p(z) for classifier-free guidance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ldmkit.conditioning.clip_config import ClipTextConfig
from ldmkit.data.degradations import BlindDegradationConfig
from ldmkit.data.masks import MaskConfig
from ldmkit.config import option
from ldmkit.errors import ConfigError

ConditionerKind = Literal["none", "class", "text", "pretrained_text", "clip_text"]
ConcatKind = Literal["none", "masked_image", "low_res", "semantic"]

#: Width of the per-token hidden states of all-MiniLM-L6-v2.
MINILM_DIM = 384


@dataclass(frozen=True)
class TextEncoderConfig:
    """The word-level tokenizer and transformer trained from scratch (``kind: text``)."""

    min_count: int = option(1, help="a word enters the vocabulary if it occurs at least this often in the "
                                    "training captions", min=1)
    max_vocab: int = option(0, help="keep at most this many words, most frequent first (0 = no limit)", min=0)
    max_length: int = option(32, help="tokens per caption including [BOS] and [EOS]; longer captions are cut",
                             min=2, max=1024)
    width: int = option(256, help="transformer width (token embedding size)", min=8)
    depth: int = option(4, help="number of transformer blocks", min=1)
    heads: int = option(4, help="attention heads per block (width must be divisible by heads)", min=1)
    mlp_ratio: int = option(4, help="hidden size of each block's MLP, as a multiple of width", min=1)

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ConfigError(f"text.width {self.width} is not divisible by text.heads {self.heads}")


@dataclass(frozen=True)
class PretrainedTextConfig:
    """The frozen pretrained text encoder (``kind: pretrained_text``)."""

    asset: str = option("minilm", help="asset name of the encoder, fetched with `ldm assets fetch NAME`",
                        choices=("minilm",))
    max_length: int = option(77, help="tokens per prompt including [CLS] and [SEP]; longer prompts are cut",
                             min=2, max=256)
    cache_size: int = option(1024, help="how many distinct prompts keep their encoding in memory (0 = no cache)",
                             min=0)
    states_file: str = option("", help="prompt-states file written by `ldm encode --text`: prompts found there are "
                                       "not run through the network, which then loads only when a prompt is missing")


@dataclass(frozen=True)
class ConcatConfig:
    """An image-like condition concatenated to the UNet input on the latent grid (paper §3.3, §4.4-4.5)."""

    kind: ConcatKind = option("none", help="none | masked_image (inpainting) | low_res (super-resolution) | "
                                           "semantic (semantic map)")
    downsample_factor: int = option(8, help="f of the first stage: the latent grid is the image size / f",
                                    choices=(1, 2, 4, 8, 16, 32))
    latent_channels: int = option(4, help="channels of the first stage's latents (masked_image, low_res encode)",
                                  min=1)
    semantic_classes: int = option(0, help="number of classes of a semantic map (kind semantic)", min=0)
    semantic_resize: Literal["nearest", "area"] = option(
        "nearest", help="how the one-hot map is brought to the latent grid: nearest (hard) or area (class fractions)")
    low_res_mode: Literal["resize", "encode"] = option(
        "resize", help="resize: the low-res image resized (bicubic) to the latent grid; encode: upsampled to full "
                       "size and encoded by the first stage")
    low_res_factor: int = option(4, help="super-resolution factor: when a batch has no 'low_res' image, it is made "
                                         "by degrading 'image' to 1/low_res_factor of its size", min=1)
    low_res_degradation: Literal["bicubic", "blind"] = option(
        "bicubic", help="how 'low_res' is made from 'image': bicubic (paper §4.4) or blind (random blur, kernel, "
                        "noise and JPEG, ranges in concat.blind)")
    blind: BlindDegradationConfig = option(default_factory=BlindDegradationConfig,
                                           help="ranges of the blind degradation (low_res_degradation: blind)")
    masks: MaskConfig = option(default_factory=MaskConfig,
                               help="random training masks (kind masked_image, when a batch has no 'mask')")

    def __post_init__(self) -> None:
        if self.kind == "semantic" and self.semantic_classes < 2:
            raise ConfigError("concat.semantic_classes must be at least 2 for concat.kind 'semantic'")

    # What the route carries, for code outside this package (which never compares kind strings).
    @property
    def present(self) -> bool:
        return self.kind != "none"

    @property
    def inpainting(self) -> bool:
        """The masked image and its mask (paper §4.5)."""
        return self.kind == "masked_image"

    @property
    def super_resolution(self) -> bool:
        """A low-resolution image (paper §4.4)."""
        return self.kind == "low_res"

    @property
    def semantic_map(self) -> bool:
        """A segmentation map (paper §4.3.2)."""
        return self.kind == "semantic"

    @property
    def channels(self) -> int:
        """Channels C of the ``concat`` tensor this route produces (0 when the route is off)."""
        if self.kind == "masked_image":
            return self.latent_channels + 1
        if self.kind == "low_res":
            return self.latent_channels if self.low_res_mode == "encode" else 3
        if self.kind == "semantic":
            return self.semantic_classes
        return 0


@dataclass(frozen=True)
class ConditionerConfig:
    """What the denoiser is conditioned on and how the condition is encoded (paper §3.3)."""

    kind: ConditionerKind = option("none", help="none | class (label → vector) | text (transformer trained from "
                                                "scratch → context) | pretrained_text (frozen MiniLM → context) | "
                                                "clip_text (frozen CLIP / OpenCLIP of Stable Diffusion → context)")
    num_classes: int = option(0, help="number of class labels (kind class); index num_classes is the null class",
                              min=0)
    embed_dim: int = option(512, help="size of the class vector (kind class) or of the text context tokens "
                                      "(kind text); pretrained_text always gives 384", min=1)
    class_route: Literal["vector", "context"] = option(
        "vector", help="how the class embedding reaches the UNet (kind class): vector (added to the timestep "
                       "embedding) or context (one cross-attention token [B, 1, D], as CompVis' ImageNet LDMs)")
    drop_prob: float = option(0.1, help="probability of replacing the condition by the null condition during "
                                        "training (classifier-free guidance)", min=0.0, max=1.0)
    text: TextEncoderConfig = option(default_factory=TextEncoderConfig, help="text encoder trained from scratch")
    pretrained: PretrainedTextConfig = option(default_factory=PretrainedTextConfig,
                                              help="frozen pretrained text encoder")
    concat: ConcatConfig = option(default_factory=ConcatConfig, help="image-like condition on the latent grid")
    clip: ClipTextConfig = option(default_factory=ClipTextConfig, help="frozen CLIP text encoder (kind clip_text)")
    size_conditioning: bool = option(
        False, help="condition on each image's original size and crop and on the output size (SDXL §2.2-2.3 "
                    "micro-conditioning), recorded by image folders and aspect-ratio buckets; at sampling the "
                    "original size defaults to the output size and the crop to (0, 0)")

    def __post_init__(self) -> None:
        if self.kind == "class" and self.num_classes < 1:
            raise ConfigError("num_classes must be at least 1 for conditioning kind 'class'")

    # The main condition, for code outside this package (which never compares kind strings).
    @property
    def takes_text(self) -> bool:
        """Prompts: a text encoder trained with the model or a frozen pretrained one."""
        return self.kind in ("text", "pretrained_text", "clip_text")

    @property
    def trains_text_encoder(self) -> bool:
        """A text encoder trained from scratch with the model, whose vocabulary comes from the captions."""
        return self.kind == "text"

    @property
    def takes_labels(self) -> bool:
        return self.kind == "class"

    @property
    def unconditional(self) -> bool:
        """No main condition (an image-like concat condition may still be present)."""
        return self.kind == "none"

    @property
    def condition_name(self) -> str:
        """"text", "class" or "none": what a user gives the model besides images."""
        return "text" if self.takes_text else self.kind

    @property
    def context_dim(self) -> int | None:
        """Width D of the cross-attention context, or None when there is no context route."""
        if self.kind == "text":
            return self.embed_dim
        if self.kind == "pretrained_text":
            return MINILM_DIM
        if self.kind == "clip_text":
            return self.clip.width
        if self.kind == "class" and self.class_route == "context":
            return self.embed_dim
        return None

    @property
    def vector_dim(self) -> int | None:
        """Width D of the vector route, or None when there is none."""
        return self.embed_dim if self.kind == "class" and self.class_route == "vector" else None
