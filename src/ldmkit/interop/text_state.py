"""Text-encoder weights of a checkpoint → the ``clip_text`` conditioner's config and state (and back)."""

from __future__ import annotations

import dataclasses
from typing import Mapping

import torch

from ldmkit.conditioning.clip_config import ClipTextConfig, clip_family
from ldmkit.conditioning.config import ConcatConfig, ConditionerConfig
from ldmkit.errors import CheckpointError
from ldmkit.interop.keys_text import OPENCLIP_UNUSED, hf_rules, openclip_layers, openclip_rules
from ldmkit.interop.mapping import export_tensors, import_tensors, strip_prefix
from ldmkit.interop.rules import few

SD1_TEXT = "cond_stage_model.transformer."
SD2_TEXT = "cond_stage_model.model."
_HF_BUFFERS = ("text_model.embeddings.position_ids", "embeddings.position_ids")


def meta_text_model(config: ConditionerConfig) -> torch.nn.Module:
    from transformers import CLIPTextModel

    from ldmkit.conditioning.clip_text import text_model_config

    with torch.device("meta"):
        return CLIPTextModel(text_model_config(config))


def clip_from_shapes(family: str, token_embedding: torch.Tensor, positions: torch.Tensor, fc1: torch.Tensor,
                     layers: int) -> ClipTextConfig:
    """The family's config with the sizes the tensors show (heads: the family's, else 64 channels each)."""
    base = clip_family(family)
    width = int(token_embedding.shape[1])
    heads = base.heads if width == base.width else max(1, width // 64)
    return dataclasses.replace(base, width=width, vocab_size=int(token_embedding.shape[0]), layers=layers,
                               max_length=int(positions.shape[0]), mlp_width=int(fc1.shape[0]), heads=heads,
                               family=family)


def conditioner_config(clip: ClipTextConfig, concat: str, latent_channels: int, f: int) -> ConditionerConfig:
    route = ConcatConfig() if concat == "none" else ConcatConfig(
        kind=concat, downsample_factor=f, latent_channels=latent_channels, low_res_mode="resize", low_res_factor=4)
    return ConditionerConfig(kind="clip_text", clip=clip, concat=route, drop_prob=0.1)


def text_from_original(state: Mapping[str, torch.Tensor], family: str) -> tuple[ClipTextConfig, dict, list[str]]:
    """(clip config, conditioner state ``encoder.*``, notes) from a single file's ``cond_stage_model.*``."""
    notes: list[str] = []
    if family == "clip-l":
        hf = strip_prefix(state, SD1_TEXT)
        if not hf:
            raise CheckpointError(f"the checkpoint has no CLIP text encoder ({SD1_TEXT}*)")
        layers = 1 + max(int(k.split(".")[3]) for k in hf if k.startswith("text_model.encoder.layers."))
        clip = clip_from_shapes(family, hf["text_model.embeddings.token_embedding.weight"],
                                hf["text_model.embeddings.position_embedding.weight"],
                                hf["text_model.encoder.layers.0.mlp.fc1.weight"], layers)
        module = meta_text_model(ConditionerConfig(kind="clip_text", clip=clip))
        ours = import_tensors(hf_rules(module.state_dict()), hf, "text encoder", expected=None, ignore=_HF_BUFFERS)
    else:
        oc = strip_prefix(state, SD2_TEXT)
        if not oc:
            raise CheckpointError(f"the checkpoint has no OpenCLIP text encoder ({SD2_TEXT}*)")
        total = openclip_layers(oc)
        clip = clip_from_shapes(family, oc["token_embedding.weight"], oc["positional_embedding"],
                                oc["transformer.resblocks.0.mlp.c_fc.weight"], total - 1)
        module = meta_text_model(ConditionerConfig(kind="clip_text", clip=clip))
        unused = [k for k in oc if k.startswith(f"transformer.resblocks.{total - 1}.") or k in OPENCLIP_UNUSED]
        hf_state = export_tensors(openclip_rules(total - 1, module.state_dict()), oc, "text encoder", ignore=unused)
        ours = {"encoder." + k: v for k, v in hf_state.items()}
        notes.append(f"OpenCLIP text tower: kept {total - 1} of {total} layers (SD 2.x conditions on the "
                     f"penultimate), left out {few([k for k in unused if not k.startswith('transformer.')])}")
    expected = {"encoder." + k: v for k, v in module.state_dict().items()}
    bad = [k for k in expected if k not in ours or tuple(ours[k].shape) != tuple(expected[k].shape)]
    if bad:
        raise CheckpointError(f"text encoder: tensors missing or of another shape ({few(bad)})")
    return clip, ours, notes


def text_to_original(state: Mapping[str, torch.Tensor], clip: ClipTextConfig) -> dict[str, torch.Tensor]:
    """The conditioner's ``encoder.*`` state in the single-file layout of its family (SD 1.x or 2.x)."""
    hf = strip_prefix(state, "encoder.")
    if clip.family == "openclip-h":
        # Rules are written from OpenCLIP's side: import_state turns the module's keys into OpenCLIP's.
        oc = import_tensors(openclip_rules(clip.layers, hf), hf, "text encoder")
        return {SD2_TEXT + k: v for k, v in oc.items()}
    out = export_tensors(hf_rules(hf, ours_prefix=""), hf, "text encoder")
    return {SD1_TEXT + k: v for k, v in out.items()}
