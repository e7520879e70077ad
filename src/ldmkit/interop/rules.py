"""Tensor-level rules that relate one ldmkit parameter to the parameter(s) of another layout.

A layout (diffusers, the original CompVis / Stability code) names and sometimes splits tensors differently:
ldmkit fuses q/k/v projections into one tensor, uses 1×1 convolutions where diffusers uses linear layers,
and orders the heads of a fused projection differently from the original ``QKVAttentionLegacy``. A
:class:`Rule` says how one ldmkit tensor is made from foreign tensors and back, so that a whole mapping is a
list of rules generated from a config (see ``keys_unet``, ``keys_vae``) and both directions use one list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal, Mapping

import torch

How = Literal["copy", "cat", "legacy_qkv"]


@dataclass(frozen=True)
class Rule:
    """``ours`` ← ``theirs``.

    ``how``: ``copy`` (one tensor), ``cat`` (ours is the concatenation of theirs along dim 0, e.g. q, k, v →
    to_qkv), ``legacy_qkv`` (one fused qkv whose rows are ordered [head][q, k, v][d], as the original
    ``AttentionBlock`` with ``QKVAttentionLegacy``; ours is ordered [q, k, v][head][d]).
    ``their_ndim``: the foreign weight's number of dimensions when it differs from ours (2 for a linear layer
    or 3 for a 1-D convolution standing in for our 1×1 ``Conv2d``); None when the shapes agree.
    """

    ours: str
    theirs: tuple[str, ...]
    how: How = "copy"
    their_ndim: int | None = None
    heads: int = 1


def _to_our_shape(t: torch.Tensor, rule: Rule) -> torch.Tensor:
    if rule.their_ndim is not None and t.ndim == rule.their_ndim and t.ndim < 4 and t.ndim >= 2:
        return t.reshape(*t.shape[:2], 1, 1)  # [O, I] or [O, I, 1] → [O, I, 1, 1]
    return t


def _to_their_shape(t: torch.Tensor, rule: Rule) -> torch.Tensor:
    if rule.their_ndim is not None and t.ndim == 4:
        return t.reshape(*t.shape[:2], *([1] * (rule.their_ndim - 2)))  # [O, I, 1, 1] → [O, I] or [O, I, 1]
    return t


def _legacy_order(t: torch.Tensor, heads: int, to_ours: bool) -> torch.Tensor:
    rest = t.shape[1:]
    d = t.shape[0] // (3 * heads)
    if to_ours:  # [heads, 3, d, ...] → [3, heads, d, ...]
        return t.reshape(heads, 3, d, *rest).transpose(0, 1).reshape(t.shape)
    return t.reshape(3, heads, d, *rest).transpose(0, 1).reshape(t.shape)


def ours_from(rule: Rule, tensors: list[torch.Tensor]) -> torch.Tensor:
    """Our tensor from the foreign tensors named by ``rule.theirs`` (in that order)."""
    parts = [_to_our_shape(t, rule) for t in tensors]
    if rule.how == "cat":
        return torch.cat(parts, dim=0)
    if rule.how == "legacy_qkv":
        return _legacy_order(parts[0], rule.heads, to_ours=True)
    return parts[0]


def theirs_from(rule: Rule, tensor: torch.Tensor) -> list[torch.Tensor]:
    """The foreign tensors of ``rule.theirs`` from our tensor."""
    if rule.how == "cat":
        parts = list(tensor.chunk(len(rule.theirs), dim=0))
    elif rule.how == "legacy_qkv":
        parts = [_legacy_order(tensor, rule.heads, to_ours=False)]
    else:
        parts = [tensor]
    return [_to_their_shape(p, rule).contiguous() for p in parts]


def few(keys: Iterable[str], n: int = 4) -> str:
    """'a, b, c and 7 more' for messages."""
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def with_params(ours: str, theirs: str, *names: str, **kw) -> list[Rule]:
    """One copy rule per parameter name (default weight and bias) of a layer."""
    return [Rule(f"{ours}.{n}", (f"{theirs}.{n}",), **kw) for n in (names or ("weight", "bias"))]


def import_state(rules: list[Rule], state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str],
                                                                                   list[str]]:
    """(our state, foreign keys the rules needed but ``state`` lacks, keys of ``state`` no rule used)."""
    out, missing, used = {}, [], set()
    for rule in rules:
        absent = [k for k in rule.theirs if k not in state]
        if absent:
            missing.extend(absent)
            continue
        out[rule.ours] = ours_from(rule, [state[k] for k in rule.theirs])
        used.update(rule.theirs)
    return out, missing, sorted(set(state) - used)


def export_state(rules: list[Rule], state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str],
                                                                                   list[str]]:
    """(foreign state, our keys the rules needed but ``state`` lacks, keys of ``state`` no rule used)."""
    out, missing, used = {}, [], set()
    for rule in rules:
        if rule.ours not in state:
            missing.append(rule.ours)
            continue
        for key, tensor in zip(rule.theirs, theirs_from(rule, state[rule.ours])):
            out[key] = tensor
        used.add(rule.ours)
    return out, missing, sorted(set(state) - used)
