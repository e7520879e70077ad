"""Adapter files: safetensors in diffusers' layout (``NAME.safetensors``) and kohya's (``NAME.kohya.safetensors``),
written from and read into ldmkit's per-layer factors.

Reading checks the file against the model it is for: every LoRA tensor must name a layer of this model and fit its
shape, and every value must be finite; otherwise one line says what is wrong.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ldmkit.adapters.factors import Adapter, LoraFactor
from ldmkit.adapters.layout_diffusers import Foreign, from_diffusers, is_diffusers, to_diffusers
from ldmkit.adapters.layout_kohya import from_kohya, is_kohya, to_kohya
from ldmkit.adapters.names import FILE_PREFIX, component_places
from ldmkit.adapters.split import join, split
from ldmkit.errors import CheckpointError
from ldmkit.io.model_dir import ADAPTER_METADATA, ADAPTERS_DIR
from ldmkit.interop.rules import few

KOHYA_SUFFIX = ".kohya.safetensors"


def find_adapters(model_dir: str | Path) -> dict[str, Path]:
    """{name: file} of the adapters beside a model (``<model>/adapters/*.safetensors``, kohya twins left out)."""
    folder = Path(model_dir) / ADAPTERS_DIR
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    return {p.name.removesuffix(".safetensors"): p for p in files if not p.name.endswith(KOHYA_SUFFIX)}


def kohya_path(path: Path) -> Path:
    """``NAME.safetensors`` → ``NAME.kohya.safetensors``."""
    return path.with_name(path.name[: -len(".safetensors")] + KOHYA_SUFFIX)


def _foreign(adapters: dict[str, Adapter], components: dict[str, nn.Module]) -> Foreign:
    out = {}
    for component, factors in adapters.items():
        places = component_places(component, components[component], list(factors))
        for path, factor in factors.items():
            for layer, part in split(factor, places[path]):
                out[(FILE_PREFIX[component], layer)] = part
    return out


def save_adapter(path: str | Path, adapters: dict[str, Adapter], components: dict[str, nn.Module],
                 info: dict | None = None) -> list[Path]:
    """Write ``path`` (diffusers' layout, ``.safetensors``) and its kohya twin beside it; returns both paths."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    foreign = _foreign(adapters, components)
    ranks = sorted({f.rank for f in foreign.values()})
    meta = {"format": "pt", ADAPTER_METADATA: json.dumps(info or {})}
    save_file(to_diffusers(foreign), str(path), metadata=meta)
    first = next(iter(foreign.values()))
    kohya_meta = {**meta, "ss_network_module": "networks.lora", "ss_network_dim": str(ranks[-1]),
                  "ss_network_alpha": str(first.alpha)}
    save_file(to_kohya(foreign), str(kohya_path(path)), metadata=kohya_meta)
    return [path, kohya_path(path)]


def _adaptable(module: nn.Module) -> dict[str, nn.Module]:
    """{path: plain layer} of the linear / conv layers of ``module``, seen through LoRA layers already present."""
    out = {}
    for name, m in module.named_modules():
        if ".lora_" in name or not isinstance(m, (nn.Linear, nn.Conv2d)):
            continue
        out[name.removesuffix(".base_layer")] = m
    return out


def _read(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"LoRA file {path} does not exist; give the path of a .safetensors adapter")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # a truncated or non-safetensors file
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); give a LoRA .safetensors file") \
            from None


def read_adapter(path: str | Path, components: dict[str, nn.Module]) -> dict[str, Adapter]:
    """The adapter in ``path`` (either layout) as {component: {layer path: factor}} for ``components``."""
    path = Path(path)
    state = _read(path)
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path} holds non-finite values in {few(bad)}; the adapter is broken, train it again")
    where, layers = {}, {}
    for component, module in components.items():
        found = _adaptable(module)
        places = component_places(component, module, list(found))
        for name, place in places.items():
            layers[(component, name)] = found[name]
            for i, foreign in enumerate(place.foreign):
                where[(FILE_PREFIX[component], foreign)] = (component, name, i, place)
    keys = list(state)
    if is_kohya(keys):
        foreign, rest = from_kohya(state, list(where))
    elif is_diffusers(keys):
        foreign, rest = from_diffusers(state)
    else:
        raise CheckpointError(f"{path} is no LoRA file: none of its keys ({few(keys)}) is in diffusers' "
                              "(….lora_A.weight) or kohya's (lora_unet_….lora_down.weight) layout")
    unknown = rest + [f"{p}.{layer}" for p, layer in foreign if (p, layer) not in where]
    if unknown:
        raise CheckpointError(f"{path} adapts layers this model does not have ({few(unknown)}): it was made for "
                              "another architecture; use an adapter trained on this model")
    parts: dict[tuple[str, str], dict[int, LoraFactor]] = {}
    for key, factor in foreign.items():
        component, name, i, place = where[key]
        parts.setdefault((component, name), {})[i] = factor
    out: dict[str, Adapter] = {}
    for (component, name), pieces in parts.items():
        factor = join(pieces, component_places(component, components[component], [name])[name])
        _check_shape(path, name, factor, layers[(component, name)])
        out.setdefault(component, {})[name] = factor
    return out


def _check_shape(path: Path, name: str, factor: LoraFactor, layer: nn.Module) -> None:
    weight = layer.weight
    fits = (factor.up.shape[0] == weight.shape[0] and factor.up.flatten(1).shape[1] == factor.rank
            and factor.down.flatten(1).shape[1] == weight[0].numel())
    if not fits or not math.isfinite(factor.alpha):
        raise CheckpointError(f"{path}: the adapter of {name} is {list(factor.up.shape[:1])}×"
                              f"{list(factor.down.shape)} but the layer's weight is {list(weight.shape)}: it was made "
                              "for another architecture")


__all__ = ["ADAPTERS_DIR", "KOHYA_SUFFIX", "find_adapters", "kohya_path", "read_adapter", "save_adapter"]
