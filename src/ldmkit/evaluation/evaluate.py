"""Scoring a set of images against reference statistics: the function behind ``ldm eval images`` and
``ldm eval generation``.

Metrics (names in ``metrics=``):

- ``fd``: Fréchet distance of Gaussians fitted to the features (FID with the standard Inception network);
- ``kd``: kernel distance, unbiased MMD² with the cubic kernel (KID with Inception), mean ± std over subsets;
- ``pr``: improved precision and recall (Kynkäänniemi et al. 2019), k nearest neighbours;
- ``is``: Inception Score (standard Inception network only; needs no reference);
- ``accuracy``: top-1 accuracy of a user classifier on class-conditional samples (needs labels).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ldmkit import __version__
from ldmkit.errors import ConfigError
from ldmkit.evaluation.classifier import ClassifierSource, classification_accuracy, load_classifier
from ldmkit.evaluation.extract import ImageSource, extract_features
from ldmkit.evaluation.extractor import FeatureExtractor, build_feature_extractor, metric_names
from ldmkit.evaluation.frechet import frechet_distance, mean_and_covariance
from ldmkit.evaluation.inception_score import inception_score
from ldmkit.evaluation.kid import kernel_distance
from ldmkit.evaluation.precision_recall import precision_recall
from ldmkit.evaluation.sources import ReferenceOrigin
from ldmkit.evaluation.stats import ReferenceStats, check_compatible, check_feature_name, load_stats

METRICS = ("fd", "kd", "pr", "is", "accuracy")
DEFAULT_METRICS = ("fd", "kd", "pr")
_NEEDS_REFERENCE = {"fd", "kd", "pr"}


def _extractor(feature: str | FeatureExtractor, device: torch.device | str | None,
               weights: str | Path | None) -> FeatureExtractor:
    if isinstance(feature, str):
        return build_feature_extractor(feature, device=device, weights=weights)
    return feature


def _device_of(extractor: FeatureExtractor) -> torch.device:
    return torch.device(getattr(extractor, "device", "cpu"))


def compute_reference_stats(images: ImageSource, feature: str | FeatureExtractor = "efflite0", *,
                            source: str | ReferenceOrigin = "", keep_features: bool = True, batch_size: int = 50,
                            device: torch.device | str | None = None, feature_weights: str | Path | None = None,
                            progress: bool = False) -> ReferenceStats:
    """Feature statistics of real images (every rank's share, gathered), ready to :meth:`~ReferenceStats.save`."""
    extractor = _extractor(feature, device, feature_weights)
    out = extract_features(extractor, images, batch_size=batch_size, progress=progress)
    if out.count < 2:
        raise ConfigError(f"reference statistics need at least 2 images, got {out.count}")
    source = source if isinstance(source, ReferenceOrigin) else ReferenceOrigin(source)
    return ReferenceStats.from_features(out.features, extractor, image_size=out.image_size,
                                        fingerprint=out.fingerprint, source=source.text, data_source=source.data,
                                        keep_features=keep_features)


def evaluate_images(
    images: ImageSource,
    reference: ReferenceStats | str | Path | None = None,
    *,
    feature: str | FeatureExtractor = "efflite0",
    metrics: Sequence[str] = DEFAULT_METRICS,
    feature_weights: str | Path | None = None,
    device: torch.device | str | None = None,
    classifier: ClassifierSource | None = None,
    batch_size: int = 50,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    pr_k: int = 3,
    is_splits: int = 10,
    seed: int = 0,
    allow_size_mismatch: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Score images (in [-1, 1]; each rank passes its own share under torchrun) against ``reference``.

    Returns ``{"metrics": {name: value}, "settings": {...}, "num_images", "seconds", "images_per_second"}``;
    metric names carry the feature network (``FD-EffLite0``; ``FID``/``KID``/``IS`` only with Inception).
    """
    metrics = tuple(dict.fromkeys(metrics))
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ConfigError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(METRICS)}")
    if isinstance(reference, (str, Path)):
        reference = load_stats(reference)
    if reference is None and _NEEDS_REFERENCE & set(metrics):
        raise ConfigError("fd, kd and pr need reference statistics: pass --reference stats.npz "
                          "(made with `ldm eval stats`)")
    if "accuracy" in metrics and classifier is None:
        raise ConfigError("the accuracy metric needs a classifier: pass --classifier MODEL_DIR (or 'efflite0')")
    if reference is not None and isinstance(feature, str):
        check_feature_name(reference, feature)
    start = time.perf_counter()
    extractor = _extractor(feature, device, feature_weights)
    names = metric_names(extractor.label)
    if "is" in metrics and extractor.label != "Inception":
        raise ConfigError("the Inception Score is defined only with the standard Inception network: "
                          "use --feature inception or drop 'is'")
    if reference is not None:
        check_compatible(reference, extractor, need_features=bool({"kd", "pr"} & set(metrics)))
    run_classifier = load_classifier(classifier, device=_device_of(extractor)) if "accuracy" in metrics else None

    out = extract_features(extractor, images, batch_size=batch_size, with_logits="is" in metrics,
                           classifier=run_classifier, progress=progress)
    extract_seconds = time.perf_counter() - start
    if reference is not None:
        check_compatible(reference, extractor, image_size=out.image_size, allow_size_mismatch=allow_size_mismatch)

    results: dict[str, float] = {}
    on = _device_of(extractor)
    if "fd" in metrics:
        results[names["fd"]] = frechet_distance(*mean_and_covariance(out.features), reference.mu, reference.sigma)
    if "kd" in metrics:
        mean, std = kernel_distance(reference.features, out.features, subsets=kid_subsets,
                                    subset_size=kid_subset_size, seed=seed, device=on)
        results[names["kd"]], results[names["kd"] + "-std"] = mean, std
    if "pr" in metrics:
        results[names["precision"]], results[names["recall"]] = precision_recall(
            reference.features, out.features, k=pr_k, device=on)
    if "is" in metrics:
        results[names["is"]], results[names["is"] + "-std"] = inception_score(out.logits, splits=is_splits)
    if "accuracy" in metrics:
        results["Accuracy"] = classification_accuracy(out.classifier_logits, out.labels)
    total = time.perf_counter() - start

    settings: dict[str, Any] = {
        "feature": extractor.name,
        "protocol": extractor.protocol,
        "metrics": list(metrics),
        "image_size": list(out.image_size) if out.image_size else None,
        "samples_fingerprint": out.fingerprint,
        "device": str(on),
        "torch": torch.__version__,
        "ldmkit": __version__,
        "python": platform.python_version(),
    }
    if reference is not None:
        settings["reference"] = {"source": reference.source, "count": reference.count,
                                 "fingerprint": reference.fingerprint,
                                 "image_size": list(reference.image_size) if reference.image_size else None}
    if "kd" in metrics:
        settings.update(kid_subsets=kid_subsets,
                        kid_subset_size=int(min(kid_subset_size, out.count, reference.count)), seed=seed)
    if "pr" in metrics:
        settings["pr_k"] = pr_k
    if "is" in metrics:
        settings["is_splits"] = is_splits
    return {
        "metrics": {k: float(v) for k, v in results.items()},
        "settings": settings,
        "num_images": out.count,
        "seconds": round(total, 3),
        "extract_seconds": round(extract_seconds, 3),
        "images_per_second": round(out.count / extract_seconds, 2) if extract_seconds > 0 else None,
    }
