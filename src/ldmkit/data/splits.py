"""Held-out splits for sources that have none, fixed by a seed.

Each item's key (a relative path, an emoji's code points, a shard sample key) gets a score in [0, 1)
from a hash of ``(seed, key)``. Map-style sources hold out the ``round(fraction * n)`` lowest-scoring
items — an exact count that does not depend on listing order, and adding a file moves at most one
other across the boundary. Streaming sources hold out the items scoring below ``fraction``.

Split names: ``train`` (everything not held out), ``val`` and ``test`` (both the held-out part), ``all``.
"""

from __future__ import annotations

import hashlib
from typing import Sequence, TypeVar

from ldmkit.errors import ConfigError

T = TypeVar("T")
SPLITS = ("train", "val", "test", "all")


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ConfigError(f"split '{split}' is not one of {', '.join(SPLITS)}")
    return split


def split_score(key: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by ``(seed, key)``."""
    digest = hashlib.blake2b(f"{seed}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def held_out_keys(keys: Sequence[str], fraction: float, seed: int) -> set[str]:
    """The ``round(fraction * n)`` of the ``n`` distinct keys with the lowest scores (items sharing a key, such as
    one emoji in several sets, fall on the same side)."""
    keys = list(dict.fromkeys(keys))
    count = round(fraction * len(keys))
    if fraction > 0 and count == 0 and len(keys) > 1:
        count = 1
    ranked = sorted(keys, key=lambda k: (split_score(k, seed), k))
    return set(ranked[:count])


def select_split(items: Sequence[T], keys: Sequence[str], split: str, fraction: float, seed: int) -> list[T]:
    """The items of ``split``, in their original order."""
    check_split(split)
    if split == "all":
        return list(items)
    held = held_out_keys(keys, fraction, seed)
    want_held = split in ("val", "test")
    return [item for item, key in zip(items, keys) if (key in held) == want_held]


def stream_in_split(key: str, split: str, fraction: float, seed: int) -> bool:
    """Whether a streamed item belongs to ``split`` (held out when its score is below ``fraction``)."""
    if split == "all":
        return True
    held = split_score(key, seed) < fraction
    return held if split in ("val", "test") else not held
