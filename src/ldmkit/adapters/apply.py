"""Adapters on a whole model: load files onto its UNet and conditioner at a scale, read them back, merge, remove.

``model`` is anything with ``unet`` and ``conditioner`` (a :class:`~ldmkit.model.LatentDiffusionModel`). Loaded
adapters stay separate peft layers, so several can be active at once, each at its own scale, and can be removed
again; merging adds their scaled updates into the base weights and leaves plain layers (``ldm lora merge``).
"""

from __future__ import annotations

import math
from pathlib import Path

from torch import nn

from ldmkit.adapters.factors import Adapter
from ldmkit.adapters.files import read_adapter, save_adapter
from ldmkit.adapters.peft_layers import adapter_names, lora_layers, read_factors, remove_layers, set_factors
from ldmkit.errors import ConfigError


def components(model) -> dict[str, nn.Module]:
    return {"unet": model.unet, "conditioner": model.conditioner}


def parse_lora(spec: str) -> tuple[Path, float]:
    """``FILE[:SCALE]`` → (path, scale); the scale defaults to 1."""
    path, scale = spec, 1.0
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            path, scale = head, float(tail)
        except ValueError:
            path = spec  # a colon inside the path itself
    if not math.isfinite(scale):
        raise ConfigError(f"--lora {spec}: the scale {tail} is not a finite number; write FILE:0.8 (or FILE for 1)")
    return Path(path), scale


def check_scale(scale: float, what: str) -> float:
    scale = float(scale)
    if not math.isfinite(scale):
        raise ConfigError(f"{what}: the LoRA scale {scale} is not a finite number; use e.g. 1.0 or 0.7")
    return scale


def load_lora(model, path: str | Path, scale: float = 1.0, name: str | None = None) -> str:
    """Add the adapter in ``path`` to ``model`` at ``scale`` (next to those already loaded); returns its name."""
    scale = check_scale(scale, str(path))
    parts = components(model)
    adapters = read_adapter(path, parts)
    taken = set().union(*(adapter_names(m) for m in parts.values()))
    base = name or Path(path).name.removesuffix(".safetensors").removesuffix(".kohya").replace(".", "_")
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    device = model.device
    for component, factors in adapters.items():
        set_factors(parts[component], factors, name)
        for layer in lora_layers(parts[component]).values():
            if name in layer.lora_A:
                layer.set_adapter(sorted(set(layer.active_adapters) | {name}), inference_mode=True)
                layer.set_scale(name, scale)
        parts[component].to(device)
    return name


def loaded_loras(model) -> set[str]:
    return set().union(*(adapter_names(m) for m in components(model).values()))


def unload_loras(model) -> None:
    """Remove every adapter: the model is the base model again."""
    for module in components(model).values():
        remove_layers(module, merge=False)


def merge_loras(model) -> None:
    """Add the active adapters (at their scales) into the base weights and remove the adapter layers."""
    for module in components(model).values():
        remove_layers(module, merge=True)


def model_factors(model, name: str) -> dict[str, Adapter]:
    """{component: factors} of adapter ``name`` in ``model`` (empty components left out)."""
    out = {c: read_factors(m, name) for c, m in components(model).items()}
    return {c: f for c, f in out.items() if f}


def write_lora(model, name: str, path: str | Path, info: dict | None = None) -> list[Path]:
    """Write adapter ``name`` of ``model`` to ``path`` (diffusers' layout) and its kohya twin."""
    return save_adapter(path, model_factors(model, name), components(model), info)


__all__ = ["components", "check_scale", "load_lora", "loaded_loras", "merge_loras", "model_factors", "parse_lora",
           "unload_loras", "write_lora"]
