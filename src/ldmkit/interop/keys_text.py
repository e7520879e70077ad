"""Parameter names of the CLIP text encoders: ldmkit's ``clip_text`` conditioner, Hugging Face's
``CLIPTextModel`` files (SD 1.x ``cond_stage_model.transformer.text_model.*``, diffusers ``text_encoder/``) and
OpenCLIP's text tower (SD 2.x ``cond_stage_model.model.*``).

On disk a CLIPTextModel's keys start with ``text_model.``; recent transformers versions drop that level in
the module, so the live module's own keys decide (:func:`hf_rules`). OpenCLIP fuses q, k, v into one
``in_proj``; the rules for it are written from OpenCLIP's side (``ours`` = OpenCLIP), so importing uses
:func:`export_state` and exporting :func:`import_state`.
"""

from __future__ import annotations

from typing import Iterable

from ldmkit.interop.rules import Rule, with_params

HF_PREFIX = "text_model."
#: Entries of an OpenCLIP text tower that the conditioning does not use.
OPENCLIP_UNUSED = ("text_projection", "logit_scale", "attn_mask")


def hf_rules(module_keys: Iterable[str], ours_prefix: str = "encoder.") -> list[Rule]:
    """ldmkit conditioner keys (``encoder.`` + the module's keys) ← the on-disk ``text_model.*`` names."""
    rules = []
    for key in module_keys:
        theirs = key if key.startswith(HF_PREFIX) else HF_PREFIX + key
        rules.append(Rule(ours_prefix + key, (theirs,)))
    return rules


def openclip_rules(layers: int, module_keys: Iterable[str]) -> list[Rule]:
    """OpenCLIP text-tower keys (``ours`` here) ← the module's CLIPTextModel keys, for the first ``layers`` layers."""
    nested = any(k.startswith(HF_PREFIX) for k in module_keys)
    hf = HF_PREFIX if nested else ""
    rules = [Rule("token_embedding.weight", (f"{hf}embeddings.token_embedding.weight",)),
             Rule("positional_embedding", (f"{hf}embeddings.position_embedding.weight",))]
    for i in range(layers):
        o, t = f"transformer.resblocks.{i}", f"{hf}encoder.layers.{i}"
        for p in ("weight", "bias"):
            rules.append(Rule(f"{o}.attn.in_proj_{p}", tuple(f"{t}.self_attn.{n}_proj.{p}" for n in "qkv"), "cat"))
        for ours, theirs in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                             ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
            rules += with_params(f"{o}.{ours}", f"{t}.{theirs}")
    return rules + with_params("ln_final", f"{hf}final_layer_norm")


def openclip_layers(keys: Iterable[str]) -> int:
    """Number of resblocks in an OpenCLIP text tower's keys."""
    found = {int(k.split(".")[2]) for k in keys if k.startswith("transformer.resblocks.")}
    return max(found) + 1 if found else 0
