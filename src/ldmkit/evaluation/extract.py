"""Running a feature network over batches of images, on every rank, and gathering the results."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ldmkit import runtime
from ldmkit.errors import ConfigError
from ldmkit.evaluation.classifier import Classifier
from ldmkit.evaluation.distributed import gather_rows
from ldmkit.evaluation.extractor import FeatureExtractor, to_uint8_levels

# A tensor [N, 3, H, W], or an iterable of batches: tensors, (images, labels) pairs or {"image", "label"} dicts.
ImageSource = torch.Tensor | Iterable[Any]


@dataclass
class Extracted:
    """Features of a whole image set (all ranks), on the CPU."""

    features: torch.Tensor  # [N, D] float32
    logits: torch.Tensor | None  # [N, K] of the extractor's own classifier (Inception Score), when asked for
    classifier_logits: torch.Tensor | None  # [N, K'] of a user classifier, when given
    labels: torch.Tensor | None  # [N] class labels that came with the images, if any
    image_size: tuple[int, int] | None  # (H, W) when every image had that size, else None
    fingerprint: str  # SHA-256 over the sorted per-image hashes of the 8-bit images ("" if not computed)

    @property
    def count(self) -> int:
        return int(self.features.shape[0])


def iterate_batches(images: ImageSource, batch_size: int = 50) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """(images [B, 3, H, W] in [-1, 1], labels [B] or None) from any :data:`ImageSource`."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ConfigError(f"images must be a [N, 3, H, W] tensor, got shape {list(images.shape)}")
        images = [images[start:start + batch_size] for start in range(0, images.shape[0], batch_size)]
    for batch in images:
        labels = None
        if isinstance(batch, dict):
            if "image" not in batch:
                raise ConfigError(f"a batch dict needs an 'image' entry, got keys {sorted(batch)}")
            labels = batch.get("label")
            batch = batch["image"]
        elif isinstance(batch, (tuple, list)):
            batch, labels = batch[0], (batch[1] if len(batch) > 1 else None)
        if not isinstance(batch, torch.Tensor):
            raise ConfigError(f"image batches must be tensors [B, 3, H, W], got {type(batch).__name__}")
        if batch.ndim == 3:
            batch = batch[None]
        if batch.ndim == 4 and batch.shape[1] == 1:
            batch = batch.expand(-1, 3, -1, -1)  # grey images are scored as RGB
        if labels is not None:
            labels = torch.as_tensor(labels).reshape(-1).long()
        yield batch, labels


def _image_digests(images: torch.Tensor) -> torch.Tensor:
    """SHA-256 of each image's 8-bit values and shape → [B, 32] uint8."""
    levels = to_uint8_levels(images).to(torch.uint8).cpu()
    rows = []
    for image in levels:
        digest = hashlib.sha256(str(tuple(image.shape)).encode())
        digest.update(image.numpy().tobytes())
        rows.append(torch.frombuffer(bytearray(digest.digest()), dtype=torch.uint8))
    return torch.stack(rows) if rows else torch.zeros(0, 32, dtype=torch.uint8)


def combine_digests(digests: torch.Tensor) -> str:
    """One order-independent fingerprint of a set of images from their digests [N, 32]."""
    rows = sorted(bytes(row.tolist()) for row in digests)
    return hashlib.sha256(b"".join(rows)).hexdigest()


def extract_features(extractor: FeatureExtractor, images: ImageSource, *, batch_size: int = 50,
                     with_logits: bool = False, classifier: Classifier | None = None, fingerprint: bool = True,
                     progress: bool = False) -> Extracted:
    """Features of this rank's images, gathered from all ranks (under torchrun) onto every rank.

    ``with_logits`` also keeps the extractor's own class logits (needs ``features_and_logits``);
    ``classifier`` is run on the same images for classification accuracy.
    """
    if with_logits and not hasattr(extractor, "features_and_logits"):
        raise ConfigError(f"feature network '{extractor.name}' has no classifier outputs")
    feats, logits, cls_logits, labels, digests = [], [], [], [], []
    sizes: set[tuple[int, int]] = set()
    bar = None
    if progress and runtime.is_main_process():
        from ldmkit.progress import progress_bar

        bar = progress_bar(desc=f"features ({extractor.name})", unit="img")
    for batch, batch_labels in iterate_batches(images, batch_size):
        sizes.add((int(batch.shape[-2]), int(batch.shape[-1])))
        if with_logits:
            f, lg = extractor.features_and_logits(batch)
            logits.append(lg.cpu())
        else:
            f = extractor(batch)
        feats.append(f.float().cpu())
        if classifier is not None:
            cls_logits.append(classifier(batch).float().cpu())
        if batch_labels is not None:
            labels.append(batch_labels.cpu())
        if fingerprint:
            digests.append(_image_digests(batch))
        if bar is not None:
            bar.update(batch.shape[0])
    if bar is not None:
        bar.close()
    features = gather_rows(_cat(feats, torch.float32))
    if features.shape[0] == 0:
        raise ConfigError("no images to evaluate")
    size_rows = gather_rows(torch.tensor(sorted(sizes), dtype=torch.long).reshape(-1, 2))
    all_sizes = {(int(h), int(w)) for h, w in size_rows.tolist()}
    gathered_labels = None
    if classifier is not None:
        if len(labels) != len(feats):
            raise ConfigError("classifier accuracy needs a class label with every image batch")
        gathered_labels = gather_rows(_cat(labels, torch.long))
    return Extracted(
        features=features,
        logits=gather_rows(_cat(logits, torch.float32)) if with_logits else None,
        classifier_logits=gather_rows(_cat(cls_logits, torch.float32)) if classifier is not None else None,
        labels=gathered_labels,
        image_size=next(iter(all_sizes)) if len(all_sizes) == 1 else None,
        fingerprint=combine_digests(gather_rows(_cat(digests, torch.uint8))) if fingerprint else "",
    )


def _cat(parts: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)
