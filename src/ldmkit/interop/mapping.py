"""Applying a rule list to a whole state dict, with one-line errors that name what does not fit."""

from __future__ import annotations

from typing import Iterable, Mapping

import torch

from ldmkit.errors import CheckpointError
from ldmkit.interop.rules import Rule, export_state, few, import_state


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix`` (e.g. ``model.diffusion_model.``), without it."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def add_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}


def import_tensors(rules: list[Rule], state: Mapping[str, torch.Tensor], what: str, *,
                   expected: Mapping[str, torch.Size | torch.Tensor] | None = None,
                   ignore: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """Our tensors from a foreign state dict; every rule must find its tensors and every tensor a rule.

    ``expected`` (our key → shape, e.g. from a model built on the meta device) also checks shapes;
    ``ignore`` lists foreign keys that may be left over (buffers that carry no weights).
    """
    ours, missing, unused = import_state(rules, state)
    unused = [k for k in unused if k not in set(ignore)]
    problems = []
    if missing:
        problems.append(f"lacks {len(missing)} tensors the config needs ({few(missing)})")
    if unused:
        problems.append(f"has {len(unused)} tensors the config does not place ({few(unused)})")
    if expected is not None and not problems:
        want = {k: tuple(getattr(e, "shape", e)) for k, e in expected.items()}  # tensors or sizes
        bad = [f"{k} {tuple(v.shape)} vs {want[k]}" for k, v in ours.items() if k in want and tuple(v.shape) != want[k]]
        if bad:
            problems.append(f"has {len(bad)} tensors of another shape ({few(bad, 2)})")
    if problems:
        raise CheckpointError(f"{what}: the checkpoint " + "; ".join(problems)
                              + ": the config does not match these weights (give the right --config)")
    return ours


def export_tensors(rules: list[Rule], state: Mapping[str, torch.Tensor], what: str, *,
                   ignore: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """Foreign tensors from our state dict; every tensor of ours (but ``ignore``) must have a place."""
    theirs, missing, unused = export_state(rules, state)
    unused = [k for k in unused if k not in set(ignore)]
    if missing or unused:
        raise CheckpointError(f"{what}: {len(missing)} tensors missing ({few(missing)}), {len(unused)} without a "
                              f"place in the other layout ({few(unused)})")
    return theirs
