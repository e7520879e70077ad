"""Evaluation: feature networks, Fréchet distance / KID / precision-recall / Inception Score, reference
statistics, classifier accuracy, a linear probe on features, and reconstruction metrics (PSNR, SSIM) of the
first stage.

Importing this package is cheap: names are loaded from their modules on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FeatureExtractor": "extractor",
    "FEATURE_EXTRACTORS": "extractor",
    "build_feature_extractor": "extractor",
    "metric_names": "extractor",
    "EfficientNetLite0": "efficientnet_lite",
    "FIDInceptionV3": "inception",
    "frechet_distance": "frechet",
    "frechet_distance_from_features": "frechet",
    "mean_and_covariance": "frechet",
    "kernel_distance": "kid",
    "precision_recall": "precision_recall",
    "inception_score": "inception_score",
    "classification_accuracy": "classifier",
    "LinearProbe": "probe",
    "load_classifier": "classifier",
    "ReferenceStats": "stats",
    "StatsMismatchError": "stats",
    "load_stats": "stats",
    "check_compatible": "stats",
    "extract_features": "extract",
    "evaluate_images": "evaluate",
    "compute_reference_stats": "evaluate",
    "folder_batches": "images",
    "reference_source": "sources",
    "psnr": "reconstruction",
    "ssim": "reconstruction",
    "ReconstructionMeter": "reconstruction",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ldmkit.evaluation' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"ldmkit.evaluation.{module}"), name)
    globals()[name] = value
    return value
