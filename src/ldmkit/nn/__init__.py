"""Shared neural-network building blocks: norms, ResNet blocks, attention, resampling, embeddings.

Used by both the first-stage autoencoders (paper §3.1) and the UNet denoiser (§3.2, §3.3). Every block
works for any spatial size, attends only through ``torch.nn.functional.scaled_dot_product_attention``
and has no data-dependent Python control flow, so it compiles with ``torch.compile``.
"""

from ldmkit.nn.attention import (
    BasicTransformerBlock,
    CrossAttention,
    FeedForward,
    SpatialSelfAttention,
    SpatialTransformer,
)
from ldmkit.nn.embeddings import SizeEmbedding, TimestepEmbedding, timestep_embedding
from ldmkit.nn.norm import group_norm, num_groups
from ldmkit.nn.resnet import ResnetBlock
from ldmkit.nn.updown import Downsample, Upsample
from ldmkit.nn.init import zero_module

__all__ = [
    "BasicTransformerBlock",
    "CrossAttention",
    "Downsample",
    "FeedForward",
    "ResnetBlock",
    "SizeEmbedding",
    "SpatialSelfAttention",
    "SpatialTransformer",
    "TimestepEmbedding",
    "Upsample",
    "group_norm",
    "num_groups",
    "timestep_embedding",
    "zero_module",
]
