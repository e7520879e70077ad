"""diffusers' LoRA layout: ``unet.<layer>.lora_A.weight`` / ``.lora_B.weight`` (what ``load_lora_weights`` and
``UNet2DConditionModel.load_lora_adapter`` read; the text encoder's under ``text_encoder.``).

diffusers takes alpha = rank when a file carries no alpha, so the scaling α/r is folded into B on writing. On
reading, the older ``….lora.down.weight`` / ``….lora.up.weight`` names are accepted too, with an optional
``….alpha`` per layer.
"""

from __future__ import annotations

import torch

from ldmkit.adapters.factors import LoraFactor

Foreign = dict[tuple[str, str], LoraFactor]  # (file prefix: unet / text_encoder, foreign layer) → factor

_NAMES = ((".lora_A.weight", ".lora_B.weight"), (".lora.down.weight", ".lora.up.weight"))


def is_diffusers(keys: list[str]) -> bool:
    return any(k.endswith(suffix) for k in keys for pair in _NAMES for suffix in pair)


def to_diffusers(foreign: Foreign) -> dict[str, torch.Tensor]:
    out = {}
    for (prefix, layer), f in foreign.items():
        out[f"{prefix}.{layer}.lora_A.weight"] = f.down.contiguous()
        out[f"{prefix}.{layer}.lora_B.weight"] = (f.scaling * f.up.float()).to(f.up.dtype).contiguous()
    return out


def from_diffusers(state: dict[str, torch.Tensor]) -> tuple[Foreign, list[str]]:
    """(factors by (prefix, layer), keys that are no part of a LoRA pair)."""
    found, used = {}, set()
    for key in state:
        for down_name, up_name in _NAMES:
            if not key.endswith(down_name):
                continue
            stem = key[: -len(down_name)]
            up_key = stem + up_name
            if up_key not in state:
                continue
            prefix, _, layer = stem.partition(".")
            down = state[key]
            alpha = state.get(stem + ".alpha")
            used.update({key, up_key, stem + ".alpha"})
            found[(prefix, layer)] = LoraFactor(down, state[up_key],
                                                float(alpha) if alpha is not None else float(down.shape[0]))
    return found, sorted(set(state) - used)


__all__ = ["Foreign", "from_diffusers", "is_diffusers", "to_diffusers"]
