"""Combining conditionings that use different routes (e.g. a text context and an inpainting concat)."""

from __future__ import annotations

from ldmkit.conditioning.types import Conditioning

_ROUTES = ("context", "vector", "concat", "sizes")


def merge_conditionings(*items: Conditioning) -> Conditioning:
    """One Conditioning holding every route set in ``items``.

    Each route (``context`` with its ``context_mask``, ``vector``, ``concat``, ``sizes``) may be set by at most one
    item, and all items must have the same batch size; otherwise a ValueError names the clash.
    """
    merged: dict[str, object] = {}
    owner: dict[str, int] = {}
    batch = None
    for i, item in enumerate(items):
        size = item.batch_size
        if size is not None:
            if batch is not None and size != batch:
                raise ValueError(f"cannot merge conditionings with batch sizes {batch} and {size}")
            batch = size
        for route in _ROUTES:
            if getattr(item, route) is None:
                continue
            if route in owner:
                raise ValueError(f"cannot merge conditionings: items {owner[route]} and {i} both set '{route}'")
            owner[route] = i
            merged[route] = getattr(item, route)
            if route == "context":
                merged["context_mask"] = item.context_mask
    return Conditioning(**merged)
