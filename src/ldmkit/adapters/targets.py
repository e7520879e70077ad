"""Which layers a LoRA adapts, by group: the names ``lora.targets`` accepts and the layers each one picks.

Groups are found by the block a layer sits in, not by name patterns, so a new backbone built from the shared
blocks of ``ldmkit.nn`` gets the same groups:

=============  ===========================================================================================
attention      q/k/v/out projections of every attention layer (``to_qkv``, ``to_q``, ``to_kv``, ``to_out.0``;
               the 1×1 ``qkv`` / ``proj_out`` of pixel self-attention)
feedforward    the transformer blocks' feed-forward layers (``ff.proj_in``, ``ff.proj_out``)
projections    a spatial transformer's ``proj_in`` / ``proj_out``
convolutions   residual blocks' ``conv1``, ``conv2``, ``skip`` and the down/up-sampling convolutions
text_encoder   the linear layers inside the text encoder's transformer layers (when the model has one)
=============  ===========================================================================================
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ldmkit.errors import ConfigError
from ldmkit.nn import Downsample, ResnetBlock, SpatialSelfAttention, SpatialTransformer, Upsample
from ldmkit.nn.attention import CrossAttention, FeedForward

UNET_GROUPS = ("attention", "feedforward", "projections", "convolutions")
TARGET_GROUPS = UNET_GROUPS + ("text_encoder",)

_LAYERS = (nn.Linear, nn.Conv2d)
_IN_TEXT_LAYER = re.compile(r"(^|\.)(blocks|layers|layer)\.\d+\.")  # a layer inside a numbered transformer layer


def _group_of(parent: nn.Module, child: str) -> str | None:
    if isinstance(parent, CrossAttention) or (isinstance(parent, SpatialSelfAttention)
                                              and child in ("qkv", "proj_out")):
        return "attention"
    if isinstance(parent, FeedForward):
        return "feedforward"
    if isinstance(parent, SpatialTransformer) and child in ("proj_in", "proj_out"):
        return "projections"
    if isinstance(parent, ResnetBlock) and child in ("conv1", "conv2", "skip"):
        return "convolutions"
    if isinstance(parent, (Downsample, Upsample)):
        return "convolutions"
    return None


def backbone_targets(network: nn.Module, groups: tuple[str, ...]) -> list[str]:
    """Module paths inside ``network`` of the linear / conv layers in ``groups``."""
    found = []
    for parent_name, parent in network.named_modules():
        for child, module in parent.named_children():
            if not isinstance(module, _LAYERS):
                if isinstance(parent, CrossAttention) and isinstance(module, nn.Sequential):  # to_out = [Linear, Drop]
                    found += [f"{_join(parent_name, child)}.{i}" for i, m in enumerate(module)
                              if isinstance(m, nn.Linear) and "attention" in groups]
                continue
            if _group_of(parent, child) in groups:
                found.append(_join(parent_name, child))
    return found


def text_targets(conditioner: nn.Module) -> list[str]:
    """Module paths inside ``conditioner`` of the linear layers in its text encoder's transformer layers."""
    return [name for name, module in conditioner.named_modules()
            if isinstance(module, nn.Linear) and _IN_TEXT_LAYER.search(name)]


def check_groups(groups: tuple[str, ...]) -> None:
    unknown = [g for g in groups if g not in TARGET_GROUPS]
    if unknown:
        raise ConfigError(f"lora.targets: unknown group {', '.join(unknown)}; use some of {', '.join(TARGET_GROUPS)}")
    if not groups:
        raise ConfigError(f"lora.targets is empty; name some of {', '.join(TARGET_GROUPS)}")


def model_targets(unet: nn.Module, conditioner: nn.Module, groups: tuple[str, ...]) -> dict[str, list[str]]:
    """{component: module paths} that ``groups`` adapt (components ``unet`` and ``conditioner``)."""
    check_groups(groups)
    out = {"unet": backbone_targets(unet, tuple(g for g in groups if g in UNET_GROUPS))}
    if "text_encoder" in groups:
        names = text_targets(conditioner)
        if not names:
            raise ConfigError("lora.targets has text_encoder, but this model's conditioner has no text encoder layers "
                              "that train (ldmkit's own text encoder and CLIP have); drop text_encoder from "
                              "lora.targets")
        out["conditioner"] = names
    if not any(out.values()):
        raise ConfigError(f"lora.targets={','.join(groups)} picks no layer of this model; add attention or "
                          "convolutions")
    return out


def _join(parent: str, child: str) -> str:
    return f"{parent}.{child}" if parent else child


def is_adaptable(module: torch.nn.Module) -> bool:
    return isinstance(module, _LAYERS)


__all__ = ["TARGET_GROUPS", "UNET_GROUPS", "backbone_targets", "check_groups", "is_adaptable", "model_targets",
           "text_targets"]
