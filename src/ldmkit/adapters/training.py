"""What a LoRA run needs from the adapters: add trainable adapters to frozen networks, and write the result as a
plain base model with the adapter files beside it (``model/adapters/NAME.safetensors`` and its kohya twin)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

from torch import nn

from ldmkit.adapters.apply import write_lora
from ldmkit.adapters.config import LoraConfig
from ldmkit.adapters.files import ADAPTERS_DIR
from ldmkit.adapters.peft_layers import add_layers, lora_layers, remove_layers
from ldmkit.adapters.targets import model_targets
from ldmkit.errors import ConfigError


def add_trained_lora(unet: nn.Module, conditioner: nn.Module, config: LoraConfig, trainable: str) -> bool:
    """Freeze ``unet`` and ``conditioner`` and add adapter ``config.name`` to the layers ``config.targets`` pick;
    only the adapters' A and B train (and the conditioner's own weights with ``config.train_conditioner``). Returns
    whether the conditioner trains (then it is among the trained networks)."""
    if trainable != "all":
        raise ConfigError(f"train.trainable={trainable} with lora: the adapters alone train; choose the layers with "
                          "lora.targets and leave train.trainable=all")
    if not config.name.isidentifier():
        raise ConfigError(f"lora.name={config.name!r} must be a plain name (letters, digits, _)")
    targets = model_targets(unet, conditioner, config.targets)
    unet.requires_grad_(False)
    conditioner.requires_grad_(False)
    parts = {"unet": unet, "conditioner": conditioner}
    for component, names in targets.items():
        if names:
            add_layers(parts[component], {n: (config.rank, config.scale_alpha) for n in names}, config.name,
                       dropout=config.dropout)
            for layer in lora_layers(parts[component]).values():  # peft leaves the new adapter trainable; be sure
                layer.lora_A[config.name].requires_grad_(True)
                layer.lora_B[config.name].requires_grad_(True)
    if config.train_conditioner:
        if not getattr(conditioner, "trainable", False):
            raise ConfigError("lora.train_conditioner=true, but this model's conditioner has no weights to train; "
                              "set lora.train_conditioner=false")
        conditioner.requires_grad_(True)  # its adapters, if any, train as well
    return "conditioner" in targets or config.train_conditioner


def plain_copy(model) -> Any:
    """``model`` with copies of its UNet and conditioner from which the adapter layers are removed (unmerged)."""
    unet, conditioner = copy.deepcopy(model.unet), copy.deepcopy(model.conditioner)
    remove_layers(unet, merge=False)
    remove_layers(conditioner, merge=False)
    return dataclasses.replace(model, unet=unet, conditioner=conditioner)


def write_lora_model(model, directory: Path, config: LoraConfig, experiment: dict, info: dict | None = None) -> None:
    """The base model to ``directory`` and the trained adapter to ``directory/adapters/`` (``info``: more to record
    in the adapter's metadata)."""
    plain_copy(model).save(directory, experiment=experiment)
    info = {"rank": config.rank, "alpha": config.scale_alpha, "targets": list(config.targets), **(info or {})}
    if config.train_conditioner:  # the adapter alone does not carry the conditioner it was trained with
        info["needs_base"] = "the conditioner of the base model written with it (lora.train_conditioner)"
    write_lora(model, config.name, directory / ADAPTERS_DIR / f"{config.name}.safetensors", info)


__all__ = ["ADAPTERS_DIR", "add_trained_lora", "plain_copy", "write_lora_model"]
