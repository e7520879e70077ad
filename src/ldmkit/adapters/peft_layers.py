"""The adapter layers themselves are peft's (``peft.tuners.lora``): adding, reading, scaling, merging, removing.

An adapter is injected into a component (the UNet, the conditioner) in place, under a name, with one rank and
alpha per layer (``rank_pattern`` / ``alpha_pattern`` keyed by exact module paths), so adapters read from files
of any rank land exactly; several adapters may be active together, each with its own scale.
"""

from __future__ import annotations

import re
import warnings

import torch
from torch import nn

from ldmkit.adapters.factors import Adapter, LoraFactor, as_module_shape
from ldmkit.errors import ConfigError


def _peft():
    try:
        import peft
        from peft.tuners.lora import LoraLayer
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        raise ConfigError("LoRA adapters need peft: pip install 'ldmkit[lora]'") from None
    return peft, LoraLayer, BaseTunerLayer


def _exact(names: list[str]) -> str:
    return "^(?:" + "|".join(re.escape(n) for n in names) + ")$"


def add_layers(module: nn.Module, shapes: dict[str, tuple[int, float]], name: str, dropout: float = 0.0) -> None:
    """Inject LoRA layers named ``name`` into ``module`` at the paths of ``shapes`` ({path: (rank, alpha)});
    A starts Kaiming-uniform and B at zero, so the module computes what it did before."""
    peft, _, _ = _peft()
    ranks = {re.escape(p): r for p, (r, _) in shapes.items()}
    alphas = {re.escape(p): a for p, (_, a) in shapes.items()}
    first_rank, first_alpha = next(iter(shapes.values()))
    config = peft.LoraConfig(r=first_rank, lora_alpha=first_alpha, lora_dropout=dropout,
                             target_modules=_exact(list(shapes)), rank_pattern=ranks, alpha_pattern=alphas)
    with warnings.catch_warnings():  # several adapters in one module are what ldmkit means to have
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        peft.inject_adapter_in_model(config, module, adapter_name=name)


def lora_layers(module: nn.Module) -> dict[str, nn.Module]:
    """{module path: peft LoRA layer} inside ``module``."""
    _, LoraLayer, _ = _peft()
    return {path: m for path, m in module.named_modules() if isinstance(m, LoraLayer)}


@torch.no_grad()
def set_factors(module: nn.Module, factors: Adapter, name: str, dropout: float = 0.0) -> None:
    """Add adapter ``name`` to ``module`` holding exactly ``factors`` ({path inside module: factor})."""
    base = {p: module.get_submodule(p) for p in factors}
    add_layers(module, {p: (f.rank, f.alpha) for p, f in factors.items()}, name, dropout)
    layers = lora_layers(module)
    for path, factor in factors.items():
        layer, fitted = layers[path], as_module_shape(factor, base[path])
        for slot, tensor in ((layer.lora_A[name], fitted.down), (layer.lora_B[name], fitted.up)):
            slot.weight.copy_(tensor.to(slot.weight.dtype))


def read_factors(module: nn.Module, name: str) -> Adapter:
    """The factors of adapter ``name`` in ``module`` (float32 copies, on the CPU)."""
    out = {}
    for path, layer in lora_layers(module).items():
        if name in layer.lora_A:
            out[path] = LoraFactor(layer.lora_A[name].weight.detach().float().cpu().clone(),
                                   layer.lora_B[name].weight.detach().float().cpu().clone(),
                                   float(layer.lora_alpha[name]))
    return out


def adapter_names(module: nn.Module) -> set[str]:
    return {n for layer in lora_layers(module).values() for n in layer.lora_A}


def activate(module: nn.Module, scales: dict[str, float]) -> None:
    """Make exactly the adapters of ``scales`` active in ``module``, each at its scale (1: as trained)."""
    layers = lora_layers(module).values()
    for layer in layers:
        present = [n for n in scales if n in layer.lora_A]
        layer.set_adapter(present, inference_mode=True)  # frozen: which adapters train is the trainer's choice
        for n in present:
            layer.set_scale(n, scales[n])


def remove_layers(module: nn.Module, merge: bool) -> None:
    """Replace every LoRA layer of ``module`` by its base layer, first adding the active adapters' updates into
    the base weights when ``merge`` (``ldm lora merge``)."""
    for path, layer in lora_layers(module).items():
        if merge and layer.active_adapters:
            layer.merge(adapter_names=list(layer.active_adapters))
        parent_path, _, child = path.rpartition(".")
        parent = module.get_submodule(parent_path) if parent_path else module
        setattr(parent, child, layer.get_base_layer())
    if "peft_config" in module.__dict__:  # peft's record of the adapters, gone with them
        del module.peft_config


def base_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state without its LoRA layers, in the plain names (``….base_layer.weight`` → ``….weight``)."""
    out = {}
    for key, value in module.state_dict().items():
        if ".lora_" in key:
            continue
        out[key.replace(".base_layer.", ".")] = value
    return out


__all__ = ["activate", "adapter_names", "add_layers", "base_state", "lora_layers", "read_factors", "remove_layers",
           "set_factors"]
