"""The feature-extractor interface shared by every metric that compares image distributions.

A feature extractor maps a batch of images ``[B, 3, H, W]`` in ``[-1, 1]`` to features ``[B, D]``
(float32). Each one owns its whole preprocessing (8-bit quantisation, resizing, normalisation), and
describes it in :attr:`FeatureExtractor.protocol`: reference statistics record the protocol, and
comparing samples against a reference computed under another protocol is an error
(:func:`ldmkit.evaluation.stats.check_compatible`), never a silently wrong number.

Networks are looked up by name in :data:`FEATURE_EXTRACTORS` (``efflite0``, ``inception``, and
``random-conv`` for tests).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from ldmkit.config import Registry
from ldmkit.errors import ConfigError


@runtime_checkable
class FeatureExtractor(Protocol):
    """What the metrics need from a feature network."""

    name: str  # registry name, e.g. "efflite0"
    resolution: int  # side of the square network input, e.g. 224
    dim: int  # feature size D
    protocol: str  # full description of the preprocessing and network; recorded in reference statistics
    label: str  # metric suffix: "EffLite0" gives FD-EffLite0, KD-EffLite0; "Inception" gives FID, KID

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] → [B, D] float32."""
        ...


# name → factory(device=..., weights=...) returning a FeatureExtractor.
FEATURE_EXTRACTORS: Registry[Callable[..., FeatureExtractor]] = Registry("feature network")


def build_feature_extractor(name: str, *, device: torch.device | str | None = None,
                            weights: str | Path | None = None, **kwargs: Any) -> FeatureExtractor:
    """The feature network registered as ``name`` on ``device`` (default: this rank's accelerator, else the CPU);
    ``weights`` overrides where its weights come from."""
    # Importing the modules registers their networks.
    from ldmkit.evaluation import efficientnet_lite, inception, random_features  # noqa: F401
    from ldmkit.runtime import pick_device

    factory = FEATURE_EXTRACTORS.get(name)
    return factory(device=torch.device(device) if device is not None else pick_device("auto"), weights=weights,
                   **kwargs)


def to_uint8_levels(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] → float32 in {0, 1, …, 255}: the values an 8-bit image file would hold.

    Every extractor quantises first, so images scored from memory and the same images saved as PNG files
    (with :func:`ldmkit.io.images.to_pil`'s rounding) give identical features.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ConfigError(f"images must have shape [B, 3, H, W], got {list(images.shape)}")
    return ((images.detach().float() + 1) / 2).clamp(0, 1).mul(255).round()  # [B, 3, H, W]


def metric_names(label: str) -> dict[str, str]:
    """Display names of the metrics computed with a network labelled ``label``.

    Only the Inception network of the standard protocol earns the names FID / KID / IS; any other network
    carries its name (FD-EffLite0), so numbers from different networks are never confused.
    """
    if label == "Inception":
        return {"fd": "FID", "kd": "KID", "precision": "Precision-Inception", "recall": "Recall-Inception",
                "is": "IS"}
    return {"fd": f"FD-{label}", "kd": f"KD-{label}", "precision": f"Precision-{label}",
            "recall": f"Recall-{label}", "is": f"IS-{label}"}
