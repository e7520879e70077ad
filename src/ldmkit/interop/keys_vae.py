"""Parameter names of ldmkit's first stages (KL and VQ) in the original layout and in diffusers'.

==============================  ================================  ==========================================
ldmkit                          original (``first_stage_model``)  diffusers (``AutoencoderKL`` / ``VQModel``)
==============================  ================================  ==========================================
``encoder.levels.{i}.blocks.{j}``  ``encoder.down.{i}.block.{j}``   ``encoder.down_blocks.{i}.resnets.{j}``
``encoder.levels.{i}.attns.{j}``   ``encoder.down.{i}.attn.{j}``    ``encoder.down_blocks.{i}.attentions.{j}``
``encoder.levels.{i}.resample``    ``encoder.down.{i}.downsample``  ``encoder.down_blocks.{i}.downsamplers.0``
``{en,de}coder.mid.block_1/attn``  ``….mid.block_1 / attn_1``       ``….mid_block.resnets.0 / attentions.0``
``decoder.levels.{k}``             ``decoder.up.{L-1-k}``           ``decoder.up_blocks.{k}`` (deepest first)
``quantizer.codebook``             ``quantize.embedding.weight``    ``quantize.embedding.weight``
==============================  ================================  ==========================================

Keys are given without the ``first_stage_model.`` prefix. The VQ quantiser's usage statistics
(``quantizer.cluster_size``, and ``embed_sum`` with EMA) are training state with no counterpart: they are
filled in on import and left out on export.
"""

from __future__ import annotations

from typing import Literal

from ldmkit.autoencoders.config import AutoencoderConfig
from ldmkit.errors import ConfigError
from ldmkit.interop.rules import Rule, with_params

Layout = Literal["original", "diffusers"]

#: ldmkit buffers of the VQ quantiser that no other layout stores.
VQ_TRAINING_BUFFERS = ("quantizer.cluster_size", "quantizer.embed_sum")


def _resnet(ours: str, theirs: str, layout: Layout, has_skip: bool) -> list[Rule]:
    rules = []
    for name in ("norm1", "conv1", "norm2", "conv2"):
        rules += with_params(f"{ours}.{name}", f"{theirs}.{name}")
    if has_skip:
        rules += with_params(f"{ours}.skip", f"{theirs}.{'nin_shortcut' if layout == 'original' else 'conv_shortcut'}")
    return rules


def _attention(ours: str, theirs: str, layout: Layout) -> list[Rule]:
    """One-head self-attention: ldmkit's fused 1×1 qkv ← q, k, v (1×1 convs, or diffusers' linear layers)."""
    if layout == "original":
        names, out, ndim = ("q", "k", "v"), "proj_out", None
        norm = "norm"
    else:
        names, out, ndim = ("to_q", "to_k", "to_v"), "to_out.0", 2
        norm = "group_norm"
    return (with_params(f"{ours}.norm", f"{theirs}.{norm}")
            + [Rule(f"{ours}.qkv.weight", tuple(f"{theirs}.{n}.weight" for n in names), "cat", their_ndim=ndim),
               Rule(f"{ours}.qkv.bias", tuple(f"{theirs}.{n}.bias" for n in names), "cat"),
               Rule(f"{ours}.proj_out.weight", (f"{theirs}.{out}.weight",), their_ndim=ndim),
               Rule(f"{ours}.proj_out.bias", (f"{theirs}.{out}.bias",))])


def _mid(ours: str, theirs: str, layout: Layout, c: AutoencoderConfig) -> list[Rule]:
    orig = layout == "original"
    rules = _resnet(f"{ours}.block_1", f"{theirs}.{'mid.block_1' if orig else 'mid_block.resnets.0'}", layout, False)
    if c.mid_attention:
        rules += _attention(f"{ours}.attn", f"{theirs}.{'mid.attn_1' if orig else 'mid_block.attentions.0'}", layout)
    return rules + _resnet(f"{ours}.block_2", f"{theirs}.{'mid.block_2' if orig else 'mid_block.resnets.1'}", layout,
                           False)


def _ends(ours: str, theirs: str, layout: Layout) -> list[Rule]:
    norm = "norm_out" if layout == "original" else "conv_norm_out"
    return (with_params(f"{ours}.conv_in", f"{theirs}.conv_in") + with_params(f"{ours}.norm_out", f"{theirs}.{norm}")
            + with_params(f"{ours}.conv_out", f"{theirs}.conv_out"))


def autoencoder_rules(c: AutoencoderConfig, layout: Layout) -> list[Rule]:
    """Every parameter of the KL / VQ first stage of ``c`` and where it lives in ``layout``."""
    if c.kind not in ("kl", "vq"):
        raise ConfigError(f"a '{c.kind}' first stage has no weights to convert")
    orig = layout == "original"
    ch, mult, levels = c.base_channels, c.channel_mult, len(c.channel_mult)
    rules = _ends("encoder", "encoder", layout) + _ends("decoder", "decoder", layout)
    width = ch * mult[0]
    for i, m in enumerate(mult):
        theirs = f"encoder.down.{i}" if orig else f"encoder.down_blocks.{i}"
        for j in range(c.num_res_blocks):
            res = f"{theirs}.block.{j}" if orig else f"{theirs}.resnets.{j}"
            rules += _resnet(f"encoder.levels.{i}.blocks.{j}", res, layout, width != ch * m)
            width = ch * m
            if c.level_factors[i] in c.attention_factors:
                rules += _attention(f"encoder.levels.{i}.attns.{j}",
                                    f"{theirs}.attn.{j}" if orig else f"{theirs}.attentions.{j}", layout)
        if i != levels - 1:
            rules += with_params(f"encoder.levels.{i}.resample.conv",
                                 f"{theirs}.downsample.conv" if orig else f"{theirs}.downsamplers.0.conv")
    rules += _mid("encoder.mid", "encoder", layout, c) + _mid("decoder.mid", "decoder", layout, c)
    for k, i in enumerate(reversed(range(levels))):
        theirs = f"decoder.up.{i}" if orig else f"decoder.up_blocks.{k}"
        for j in range(c.num_res_blocks + 1):
            res = f"{theirs}.block.{j}" if orig else f"{theirs}.resnets.{j}"
            rules += _resnet(f"decoder.levels.{k}.blocks.{j}", res, layout, width != ch * mult[i])
            width = ch * mult[i]
            if c.level_factors[i] in c.attention_factors:
                rules += _attention(f"decoder.levels.{k}.attns.{j}",
                                    f"{theirs}.attn.{j}" if orig else f"{theirs}.attentions.{j}", layout)
        if i > 0:
            rules += with_params(f"decoder.levels.{k}.resample.conv",
                                 f"{theirs}.upsample.conv" if orig else f"{theirs}.upsamplers.0.conv")
    rules += with_params("quant_conv", "quant_conv") + with_params("post_quant_conv", "post_quant_conv")
    if c.kind == "vq":
        rules.append(Rule("quantizer.codebook", ("quantize.embedding.weight",)))
    return rules
