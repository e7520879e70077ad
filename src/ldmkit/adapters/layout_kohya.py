"""kohya sd-scripts' LoRA layout: ``lora_unet_<layer>`` / ``lora_te_<layer>`` with the dots of the diffusers
layer path turned into underscores, each with ``.lora_down.weight`` (A), ``.lora_up.weight`` (B) and ``.alpha``
(a scalar; the update is ``alpha / rank · up · down``, rank = rows of down; no alpha means alpha = rank).

Underscores make the names ambiguous, so reading looks each stem up among the stems of the model's own layers.
"""

from __future__ import annotations

import torch

from ldmkit.adapters.factors import LoraFactor
from ldmkit.adapters.layout_diffusers import Foreign

STEM_PREFIX = {"unet": "lora_unet_", "text_encoder": "lora_te_"}


def is_kohya(keys: list[str]) -> bool:
    return any(k.startswith(tuple(STEM_PREFIX.values())) for k in keys)


def stem(prefix: str, layer: str) -> str:
    return STEM_PREFIX[prefix] + layer.replace(".", "_")


def to_kohya(foreign: Foreign) -> dict[str, torch.Tensor]:
    out = {}
    for (prefix, layer), f in foreign.items():
        s = stem(prefix, layer)
        out[f"{s}.lora_down.weight"] = f.down.contiguous()
        out[f"{s}.lora_up.weight"] = f.up.contiguous()
        out[f"{s}.alpha"] = torch.tensor(float(f.alpha))
    return out


def from_kohya(state: dict[str, torch.Tensor], layers: list[tuple[str, str]]) -> tuple[Foreign, list[str]]:
    """(factors by (prefix, layer) for the model's ``layers``, keys that name none of them)."""
    by_stem = {stem(p, layer): (p, layer) for p, layer in layers}
    found, used = {}, set()
    for s, where in by_stem.items():
        down, up = state.get(f"{s}.lora_down.weight"), state.get(f"{s}.lora_up.weight")
        if down is None or up is None:
            continue
        alpha = state.get(f"{s}.alpha")
        used.update({f"{s}.lora_down.weight", f"{s}.lora_up.weight", f"{s}.alpha"})
        alpha = float(alpha) if alpha is not None and float(alpha) != 0 else float(down.shape[0])
        found[where] = LoraFactor(down, up, alpha)
    return found, sorted(set(state) - used)


__all__ = ["from_kohya", "is_kohya", "stem", "to_kohya"]
