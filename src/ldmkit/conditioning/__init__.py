"""Conditioning: the typed Conditioning object and the encoders that produce it (paper §3.3)."""

from ldmkit.conditioning.base import Conditioner, Unconditional, batch_size_of
from ldmkit.conditioning.build import build_conditioner, load_conditioner
from ldmkit.conditioning.concat import (
    ConcatEncoder,
    ImageEncoder,
    degrade_bicubic,
    latent_grid,
    low_res_concat,
    masked_image_concat,
    one_hot_map,
    random_inpainting_mask,
    semantic_concat,
)
from ldmkit.conditioning.config import ConcatConfig, ConditionerConfig, PretrainedTextConfig, TextEncoderConfig
from ldmkit.conditioning.dropout import sample_drop_mask
from ldmkit.conditioning.merge import merge_conditionings
from ldmkit.conditioning.tokenizer import WordTokenizer
from ldmkit.conditioning.types import Conditioning

__all__ = [
    "ConcatConfig",
    "ConcatEncoder",
    "Conditioner",
    "ConditionerConfig",
    "Conditioning",
    "ImageEncoder",
    "PretrainedTextConfig",
    "TextEncoderConfig",
    "Unconditional",
    "WordTokenizer",
    "batch_size_of",
    "build_conditioner",
    "degrade_bicubic",
    "latent_grid",
    "load_conditioner",
    "low_res_concat",
    "masked_image_concat",
    "merge_conditionings",
    "one_hot_map",
    "random_inpainting_mask",
    "sample_drop_mask",
    "semantic_concat",
]
