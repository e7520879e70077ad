"""Perturbed-attention guidance (Ahn et al. 2024, "Self-Rectifying Diffusion Sampling with Perturbed-Attention
Guidance", §3.2–3.3): guide away from the prediction the network makes when chosen self-attention layers see
the identity map, each token attending only to itself. That prediction keeps the appearance and loses the
structure, so ``ε = ε_c + s_pag (ε_c − ε_perturbed)`` strengthens structure; it needs no condition, so it works
for unconditional models too, and it adds to classifier-free guidance:
``ε = ε_u + s (ε_c − ε_u) + s_pag (ε_c − ε_perturbed)``.

The layers are named by module path prefixes of the network (``middle``, ``up.1``; a DiT's ``blocks.6``); by
default the UNet's middle block, or a DiT's middle block, as the paper (and diffusers' ``pag_applied_layers``)
chooses for Stable Diffusion.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from torch import nn

from ldmkit.errors import ConfigError
from ldmkit.nn import CrossAttention
from ldmkit.nn.attention import SpatialSelfAttention

SelfAttention = CrossAttention | SpatialSelfAttention


def self_attention_layers(network: nn.Module) -> dict[str, SelfAttention]:
    """The self-attention modules of ``network`` by name (wrapper prefixes such as ``_orig_mod.`` kept): the
    transformer blocks' ``attn1`` and the spatial self-attention blocks of class and unconditional UNets."""
    return {name: module for name, module in network.named_modules()
            if isinstance(module, SpatialSelfAttention) or (isinstance(module, CrossAttention) and not module.is_cross)}


def _middle(names: Sequence[str]) -> tuple[str, ...]:
    """The default: the UNet's middle block, else (a DiT) the block in the middle of the stack."""
    middle = tuple(n for n in names if ".middle." in f".{n}.")
    if middle:
        return middle
    blocks = sorted({int(part) for n in names for prev, part in zip(n.split("."), n.split(".")[1:])
                     if prev == "blocks" and part.isdigit()})
    if not blocks:
        return tuple(names)
    pick = f".blocks.{blocks[len(blocks) // 2]}."
    return tuple(n for n in names if pick in f".{n}.")


def perturbed_layers(network: nn.Module, layers: Sequence[str] = ()) -> list[SelfAttention]:
    """The self-attention modules named by ``layers`` (prefixes of module paths; empty: the default)."""
    found = self_attention_layers(network)
    if not found:
        raise ConfigError("perturbed-attention guidance needs self-attention layers; this network has none "
                          "(set pag_scale=0)")
    if not layers:
        return [found[name] for name in _middle(list(found))]
    chosen = []
    for layer in layers:
        hits = [module for name, module in found.items() if f".{layer}." in f".{name}."]
        if not hits:
            listed = ", ".join(sorted(found)[:6]) + (", …" if len(found) > 6 else "")
            raise ConfigError(f"pag layer '{layer}' names no self-attention layer of this network; its layers: "
                              f"{listed} (give a prefix such as 'middle' or 'up.1')")
        chosen += hits
    return list(dict.fromkeys(chosen))


@contextlib.contextmanager
def perturbed_self_attention(network: nn.Module, layers: Sequence[str], first: int, batch: int) -> Iterator[None]:
    """Inside, the chosen self-attention layers use the identity map for the samples ``first`` to ``batch`` of a
    batch of ``batch`` samples (a wrapper that stacks tiles of that batch into one call keeps the same samples
    marked in every copy)."""
    modules = perturbed_layers(network, layers)
    for module in modules:
        module.identity = (first, batch)
    try:
        yield
    finally:
        for module in modules:
            module.identity = None


__all__ = ["perturbed_layers", "perturbed_self_attention", "self_attention_layers"]
