"""Where an adapted ldmkit layer lives in the diffusers layout (which kohya's names are also spelled from).

ldmkit fuses some projections that diffusers keeps apart (``to_qkv`` ← ``to_q``, ``to_k``, ``to_v``; ``to_kv`` ←
``to_k``, ``to_v``) and uses 1×1 convolutions where diffusers uses linear layers; the UNet's tensor rules of
:mod:`ldmkit.interop.keys_unet` already say both, so the module map is read off them. A text encoder that is a
transformers model keeps its on-disk names (``text_model.…``); ldmkit's own text transformer and backbones with
no diffusers counterpart (DiT, a vector route) keep ldmkit's names, which only ldmkit reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ldmkit.errors import ConfigError
from ldmkit.interop.keys_text import HF_PREFIX
from ldmkit.interop.keys_unet import unet_rules

#: File prefixes of the two components, diffusers' (``unet.``, ``text_encoder.``) by ldmkit component.
FILE_PREFIX = {"unet": "unet", "conditioner": "text_encoder"}


@dataclass(frozen=True)
class Place:
    """One ldmkit layer abroad: the foreign layer(s) its weight is split into (equal row blocks), and whether
    those are linear layers standing in for ldmkit's 1×1 convolution."""

    foreign: tuple[str, ...]
    linear: bool = False


def _unet_places(unet: nn.Module) -> dict[str, Place] | None:
    from ldmkit.denoisers.unet import UNet

    if not isinstance(unet, UNet):
        return None
    try:
        rules = unet_rules(unet.config, "diffusers")
    except ConfigError:
        return None  # a vector route: no diffusers counterpart
    return {r.ours[: -len(".weight")]: Place(tuple(t[: -len(".weight")] for t in r.theirs), r.their_ndim == 2)
            for r in rules if r.ours.endswith(".weight")}


def _text_places(conditioner: nn.Module) -> dict[str, Place] | None:
    encoder = getattr(conditioner, "encoder", None)
    if encoder is None or not hasattr(encoder, "save_pretrained"):
        return None  # ldmkit's own text transformer
    places = {}
    for name, _ in encoder.named_modules():
        if name:
            theirs = name if name.startswith(HF_PREFIX) else HF_PREFIX + name
            places[f"encoder.{name}"] = Place((theirs,))
    return places


def component_places(component: str, module: nn.Module, names: list[str]) -> dict[str, Place]:
    """{ldmkit module path: its place abroad} for ``names`` in ``module`` (component ``unet`` or ``conditioner``);
    a layer with no foreign counterpart keeps its own name."""
    known = (_unet_places if component == "unet" else _text_places)(module) or {}
    return {name: known.get(name, Place((name,))) for name in names}


__all__ = ["FILE_PREFIX", "Place", "component_places"]
