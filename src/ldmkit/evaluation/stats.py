"""Reference statistics: the features of a real data set, computed once and reused for every evaluation.

A ``.npz`` file (no pickles) with

- ``meta``: JSON text — feature network name, its full preprocessing protocol, feature size and input
  resolution, sample count, image size of the data, data fingerprint (SHA-256 over the sorted per-image
  hashes of the 8-bit images), source description, ldmkit version, creation time;
- ``mu`` [D] and ``sigma`` [D, D] (float64), enough for the Fréchet distance;
- ``features`` [N, D] (float32), needed for the kernel distance and precision/recall (omitted on request).

:func:`check_compatible` turns every way the samples could be evaluated differently from the reference
into a one-line :class:`StatsMismatchError`.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ldmkit import __version__
from ldmkit.errors import ConfigError, DataError
from ldmkit.evaluation.extractor import FeatureExtractor
from ldmkit.evaluation.frechet import mean_and_covariance

STATS_FORMAT = "ldmkit-reference-stats"
STATS_VERSION = 1


class StatsMismatchError(ConfigError):
    """Samples would be evaluated differently from how the reference statistics were computed."""


@dataclass
class ReferenceStats:
    """Feature statistics of a reference image set."""

    feature: str  # feature network name ("efflite0", "inception")
    protocol: str  # the network's full preprocessing / weights description
    dim: int
    resolution: int  # network input side
    count: int
    mu: np.ndarray  # [D] float64
    sigma: np.ndarray  # [D, D] float64
    features: np.ndarray | None = None  # [N, D] float32
    image_size: tuple[int, int] | None = None  # (H, W) of the images, None when sizes varied
    fingerprint: str = ""
    source: str = ""  # where the images came from, for people
    data_source: dict[str, Any] | None = None  # {"config": DataConfig dict, "split": name} of a data set
    extra: dict[str, Any] = field(default_factory=dict)  # version, creation time, free-form notes

    @classmethod
    def from_features(cls, features: Any, extractor: FeatureExtractor, *, image_size: tuple[int, int] | None = None,
                      fingerprint: str = "", source: str = "", data_source: dict[str, Any] | None = None,
                      keep_features: bool = True) -> ReferenceStats:
        mu, sigma = mean_and_covariance(features)
        array = np.asarray(features.cpu().numpy() if hasattr(features, "cpu") else features, dtype=np.float32)
        return cls(feature=extractor.name, protocol=extractor.protocol, dim=int(extractor.dim),
                   resolution=int(extractor.resolution), count=int(array.shape[0]), mu=mu, sigma=sigma,
                   features=array if keep_features else None, image_size=image_size, fingerprint=fingerprint,
                   source=source, data_source=data_source, extra={"ldmkit_version": __version__,
                                         "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def meta(self) -> dict[str, Any]:
        return {
            "format": STATS_FORMAT, "format_version": STATS_VERSION, "feature": self.feature,
            "protocol": self.protocol, "dim": self.dim, "resolution": self.resolution, "count": self.count,
            "image_size": list(self.image_size) if self.image_size else None, "fingerprint": self.fingerprint,
            "source": self.source, "data_source": self.data_source, "has_features": self.features is not None,
            **self.extra,
        }

    def save(self, path: str | Path) -> Path:
        """Write the ``.npz`` atomically (a crash never leaves a half-written file at ``path``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"meta": np.array(json.dumps(self.meta())), "mu": self.mu, "sigma": self.sigma}
        if self.features is not None:
            arrays["features"] = self.features
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path


def load_stats(path: str | Path) -> ReferenceStats:
    """Read reference statistics written by :meth:`ReferenceStats.save`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"reference statistics {path} do not exist; compute them with `ldm eval stats`")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            mu, sigma = data["mu"], data["sigma"]
            features = data["features"] if "features" in data.files else None
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not an ldmkit reference statistics file ({type(exc).__name__}: {exc})") from None
    if meta.get("format") != STATS_FORMAT:
        raise DataError(f"{path} is not an ldmkit reference statistics file (format {meta.get('format')!r})")
    if meta.get("format_version", 0) > STATS_VERSION:
        raise DataError(f"{path} has format_version {meta['format_version']}; upgrade ldmkit to read it")
    known = {"format", "format_version", "feature", "protocol", "dim", "resolution", "count", "image_size",
             "fingerprint", "source", "data_source", "has_features"}
    size = meta.get("image_size")
    return ReferenceStats(
        feature=meta["feature"], protocol=meta["protocol"], dim=int(meta["dim"]), resolution=int(meta["resolution"]),
        count=int(meta["count"]), mu=mu.astype(np.float64), sigma=sigma.astype(np.float64), features=features,
        image_size=tuple(size) if size else None, fingerprint=meta.get("fingerprint", ""),
        source=meta.get("source", ""), data_source=meta.get("data_source"), extra={k: v for k, v in meta.items() if k not in known},
    )


def check_feature_name(reference: ReferenceStats, feature: str) -> None:
    """The cheap check before a network is built: the reference used the network named ``feature``."""
    if reference.feature != feature:
        raise StatsMismatchError(
            f"reference statistics ({reference.source or 'unnamed source'}) were computed with feature network "
            f"'{reference.feature}', not '{feature}': evaluate with --feature {reference.feature} or recompute them"
        )


def check_compatible(reference: ReferenceStats, extractor: FeatureExtractor, *,
                     image_size: tuple[int, int] | None = None, allow_size_mismatch: bool = False,
                     need_features: bool = False) -> None:
    """Raise :class:`StatsMismatchError` (one line) if samples would be evaluated differently from ``reference``."""
    where = f"reference statistics ({reference.source or 'unnamed source'})"
    check_feature_name(reference, extractor.name)
    if reference.protocol != extractor.protocol or reference.resolution != extractor.resolution \
            or reference.dim != extractor.dim:
        raise StatsMismatchError(
            f"{where} used the preprocessing '{reference.protocol}' but this ldmkit uses '{extractor.protocol}': "
            "recompute the statistics with `ldm eval stats`"
        )
    if need_features and reference.features is None:
        raise StatsMismatchError(
            f"{where} hold only mean and covariance, but KID and precision/recall need the features: recompute "
            "them without --no-features, or ask only for --metrics fd"
        )
    if (not allow_size_mismatch and image_size is not None and reference.image_size is not None
            and tuple(image_size) != tuple(reference.image_size)):
        rh, rw = reference.image_size
        raise StatsMismatchError(
            f"samples are {image_size[0]}x{image_size[1]} but the {where} are of {rh}x{rw} images: compute "
            "reference statistics at the samples' size, or pass --allow-size-mismatch"
        )
