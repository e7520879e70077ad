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

from ldmkit.conditioning.masks import MaskConfig
from ldmkit.config import option
from ldmkit.errors import ConfigError

ConditionerKind = Literal["none", "class", "text", "pretrained_text"]
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
class BlindDegradationConfig:
    """Ranges of the randomised degradation chain of blind super-resolution (``low_res_degradation: blind``).

    In the spirit of BSR-degradation / Real-ESRGAN: blur → downsample → noise → JPEG, each step drawn per
    image (see :mod:`ldmkit.data.degradations`).
    """

    blur_prob: float = option(0.7, help="probability of a Gaussian blur before downsampling", min=0.0, max=1.0)
    blur_sigma: tuple[float, float] = option((0.2, 2.0), help="range [low, high] of the blur's standard deviation, "
                                                             "in high-resolution pixels", min=0.0)
    resize_modes: tuple[str, ...] = option(("bicubic", "bilinear", "area"),
                                           help="downsampling kernels, one drawn uniformly per image",
                                           choices=("bicubic", "bilinear", "area"))
    noise_prob: float = option(0.7, help="probability of adding Gaussian noise after downsampling", min=0.0, max=1.0)
    noise_sigma: tuple[float, float] = option((1.0, 20.0), help="range [low, high] of the noise's standard "
                                                               "deviation on the 0-255 scale", min=0.0)
    jpeg_prob: float = option(0.7, help="probability of a JPEG round trip at the end", min=0.0, max=1.0)
    jpeg_quality: tuple[int, int] = option((30, 95), help="range [low, high] of the JPEG quality", min=1, max=100)

    def __post_init__(self) -> None:
        for name in ("blur_sigma", "noise_sigma", "jpeg_quality"):
            low, high = getattr(self, name)
            if low > high:
                raise ConfigError(f"concat.blind.{name} must be [low, high] with low <= high; got [{low}, {high}]")
        if not self.resize_modes:
            raise ConfigError("concat.blind.resize_modes is empty; give at least one of bicubic, bilinear, area")


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
                                                "scratch → context) | pretrained_text (frozen MiniLM → context)")
    num_classes: int = option(0, help="number of class labels (kind class); index num_classes is the null class",
                              min=0)
    embed_dim: int = option(512, help="size of the class vector (kind class) or of the text context tokens "
                                      "(kind text); pretrained_text always gives 384", min=1)
    drop_prob: float = option(0.1, help="probability of replacing the condition by the null condition during "
                                        "training (classifier-free guidance)", min=0.0, max=1.0)
    text: TextEncoderConfig = option(default_factory=TextEncoderConfig, help="text encoder trained from scratch")
    pretrained: PretrainedTextConfig = option(default_factory=PretrainedTextConfig,
                                              help="frozen pretrained text encoder")
    concat: ConcatConfig = option(default_factory=ConcatConfig, help="image-like condition on the latent grid")

    def __post_init__(self) -> None:
        if self.kind == "class" and self.num_classes < 1:
            raise ConfigError("num_classes must be at least 1 for conditioning kind 'class'")

    @property
    def context_dim(self) -> int | None:
        """Width D of the cross-attention context, or None when there is no context route."""
        if self.kind == "text":
            return self.embed_dim
        if self.kind == "pretrained_text":
            return MINILM_DIM
        return None

    @property
    def vector_dim(self) -> int | None:
        """Width D of the vector route, or None when there is none."""
        return self.embed_dim if self.kind == "class" else None
