"""Which parts of a network train (``train.trainable``); the others are frozen.

A frozen parameter has ``requires_grad`` False, so it gets no gradient, no optimiser state and no place in the
DDP reducer. Parts are named by parameter-name prefixes; every parameter must belong to one part, so a network
whose parts this does not know is refused instead of half frozen.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from ldmkit.errors import ConfigError

#: The two halves of a first stage (paper §3.1). The quantiser belongs to the decoder: the diffusion model sees
#: the encoder's pre-quantisation latents, and the codebook only shapes what is decoded from them.
AUTOENCODER_PARTS: dict[str, tuple[str, ...]] = {
    "encoder": ("encoder.", "quant_conv."),
    "decoder": ("post_quant_conv.", "decoder.", "quantizer."),
}


def freeze_parts(module: torch.nn.Module, parts: Mapping[str, tuple[str, ...]], trainable: str) -> None:
    """Freeze every parameter of ``module`` outside part ``trainable`` ("all" freezes nothing). A parameter that
    was frozen already (an EMA codebook) stays frozen."""
    if trainable == "all":
        return
    if trainable not in parts:
        raise ConfigError(f"train.trainable={trainable} is not a part of this network; use all or "
                          f"{' or '.join(parts)}")
    for name, parameter in module.named_parameters():
        part = next((p for p, prefixes in parts.items() if name.startswith(prefixes)), None)
        if part is None:
            raise ConfigError(f"train.trainable={trainable}: the parameter {name} belongs to none of the parts "
                              f"{', '.join(parts)}; train with train.trainable=all")
        parameter.requires_grad_(parameter.requires_grad and part == trainable)


def trainable_parameters(parameters: Iterable[torch.nn.Parameter], trainable: str) -> list[torch.nn.Parameter]:
    """What the optimiser updates: every parameter as before with ``all`` (a resumed run's optimiser state keeps
    its indices), only unfrozen ones otherwise (frozen ones get no optimiser state)."""
    parameters = list(parameters)
    return parameters if trainable == "all" else [p for p in parameters if p.requires_grad]


__all__ = ["AUTOENCODER_PARTS", "freeze_parts", "trainable_parameters"]
