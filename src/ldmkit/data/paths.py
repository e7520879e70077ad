"""Where data sets lie when the config names no ``path``: the asset cache ``$LDMKIT_HOME``."""

from __future__ import annotations

from pathlib import Path

from ldmkit.assets.store import checked_home
from ldmkit.errors import AssetMissingError, DataError


def given_path(path: str, what: str) -> Path:
    """A path the user named; a one-line :class:`DataError` when it does not exist."""
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise DataError(f"{what} path {resolved} does not exist; check the `path` setting")
    return resolved


def asset_dir(asset: str, candidates: list[Path] | None = None) -> Path:
    """The first existing of ``$LDMKIT_HOME/<asset>`` and ``candidates``, else :class:`AssetMissingError`."""
    places = [checked_home() / asset, *(candidates or [])]
    for place in places:
        if place.is_dir():
            return place
    raise AssetMissingError(f"data set '{asset}' is not at {' or '.join(str(p) for p in places)}; "
                            f"run `ldm assets fetch {asset}` or set path=DIR")
