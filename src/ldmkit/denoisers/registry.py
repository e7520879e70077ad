"""Name → denoising network (backbone) and its config class.

A backbone is a module ``network(x, t, cond) -> prediction`` built from a frozen config dataclass and kept
on ``network.config`` (DESIGN habit 1). In a model directory its config sits under its name in
``config.json`` and its weights in ``<name>.safetensors``, so a new backbone is one file plus one
:func:`register_backbone` line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from torch import nn

from ldmkit.config import Registry, from_dict
from ldmkit.denoisers.dit import DiT
from ldmkit.denoisers.dit_config import DiTConfig
from ldmkit.denoisers.unet import UNet
from ldmkit.denoisers.unet_config import UNetConfig
from ldmkit.errors import CheckpointError


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    config_class: type
    network_class: Callable[[Any], nn.Module]


BACKBONES: Registry[BackboneSpec] = Registry("denoiser backbone")


def register_backbone(name: str, config_class: type, network_class: Callable[[Any], nn.Module]) -> BackboneSpec:
    return BACKBONES.register(name)(BackboneSpec(name, config_class, network_class))


def backbone_of(network: nn.Module) -> BackboneSpec:
    """The registered backbone ``network`` is an instance of (its config class decides)."""
    for name in BACKBONES.names():
        spec = BACKBONES.get(name)
        if isinstance(getattr(network, "config", None), spec.config_class):
            return spec
    raise CheckpointError(f"{type(network).__name__} is not a registered denoiser backbone "
                          f"({', '.join(BACKBONES.names())}); register it with register_backbone")


def backbone_in(config: Mapping[str, Any], source: str) -> BackboneSpec:
    """The backbone whose name is a key of a model directory's ``config``."""
    found = [name for name in BACKBONES.names() if name in config]
    if len(found) != 1:
        raise CheckpointError(f"{source} names {'no' if not found else 'more than one'} denoiser backbone "
                              f"(expected one of {', '.join(BACKBONES.names())} in its config)")
    return BACKBONES.get(found[0])


def build_backbone(spec: BackboneSpec, config: Mapping[str, Any]) -> nn.Module:
    return spec.network_class(from_dict(spec.config_class, dict(config)))


register_backbone("unet", UNetConfig, UNet)
register_backbone("dit", DiTConfig, DiT)

__all__ = ["BACKBONES", "BackboneSpec", "backbone_in", "backbone_of", "build_backbone", "register_backbone"]
