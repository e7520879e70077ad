"""Checks of single values that the config schema, the pipelines and the command line share.

Each check raises a one-line :class:`~ldmkit.errors.ConfigError` naming the value, what it must be and
what was given, so the same mistake reads the same wherever it is made.
"""

from __future__ import annotations

import math
import operator
from typing import Any

from ldmkit.errors import ConfigError

#: Seeds are unsigned 64-bit integers (what ``torch.Generator.manual_seed`` takes without aliasing).
MAX_SEED = 2**64 - 1


def is_finite_number(value: Any) -> bool:
    """Whether ``value`` is a real number other than NaN and ±inf (booleans are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def check_finite(name: str, value: Any) -> float:
    """``value`` as a float; a ConfigError when it is NaN, infinite or not a number."""
    if not is_finite_number(value):
        raise ConfigError(f"{name} must be a finite number; got {value!r}")
    return float(value)


def _whole(value: Any) -> int | None:
    """``value`` as an int when it is a whole number type (int, numpy integers), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def check_count(name: str, value: Any, minimum: int = 1) -> int:
    """A whole number of at least ``minimum`` (images, batch size, steps)."""
    whole = _whole(value)
    if whole is None or whole < minimum:
        raise ConfigError(f"{name} must be a whole number of at least {minimum}; got {value!r}")
    return whole


def check_seed(seed: Any, count: int = 1) -> int:
    """A seed such that ``seed``, ``seed + 1``, …, ``seed + count - 1`` (one per image) are all valid seeds."""
    whole = _whole(seed)
    if whole is None or whole < 0 or whole + max(count, 1) - 1 > MAX_SEED:
        last = f" (and seed + {count - 1} for the last image)" if count > 1 else ""
        raise ConfigError(f"seed must be a whole number in 0..{MAX_SEED}{last}; got {seed!r}")
    return whole


__all__ = ["MAX_SEED", "check_count", "check_finite", "check_seed", "is_finite_number"]
