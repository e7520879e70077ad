"""Improved precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for
Assessing Generative Models", §2).

Each set's manifold is approximated by the union of hyperspheres around its points, each with the radius
of the distance to its k-th nearest neighbour within the set (k = 3 in the paper). Precision is the
fraction of generated samples that fall inside the real manifold; recall is the fraction of real samples
inside the generated manifold. Distances are computed in row blocks so memory stays O(block × N).
"""

from __future__ import annotations

import numpy as np
import torch

from ldmkit.errors import ConfigError


def _pairwise(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances [n, m] between rows of a [n, d] and b [m, d]."""
    return torch.cdist(a, b, compute_mode="use_mm_for_euclid_dist")


def knn_radii(features: torch.Tensor, k: int = 3, block: int = 1024) -> torch.Tensor:
    """Distance of each point [N, D] to its k-th nearest neighbour in the same set (itself excluded) → [N]."""
    if features.shape[0] <= k:
        raise ConfigError(f"precision/recall with k={k} needs more than {k} samples per set, got {features.shape[0]}")
    radii = []
    for start in range(0, features.shape[0], block):
        d = _pairwise(features[start:start + block], features)  # [b, N]
        # The smallest distance is the point to itself (0); the (k+1)-th smallest is the k-th neighbour.
        radii.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def manifold_coverage(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, block: int = 1024) -> float:
    """Fraction of ``points`` [M, D] within the ball of at least one centre [N, D] of radius ``radii`` [N]."""
    inside = 0
    for start in range(0, points.shape[0], block):
        d = _pairwise(points[start:start + block], centres)  # [b, N]
        inside += int((d <= radii[None, :]).any(dim=1).sum())
    return inside / points.shape[0]


def precision_recall(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor, *, k: int = 3,
                     block: int = 1024, device: torch.device | str | None = None) -> tuple[float, float]:
    """(precision, recall) of generated features ``fake`` [M, D] against ``real`` [N, D] (float32 on ``device``)."""
    real_t = _tensor(real, device)
    fake_t = _tensor(fake, real_t.device)
    if real_t.shape[1] != fake_t.shape[1]:
        raise ConfigError(f"feature sizes differ: real {real_t.shape[1]}, generated {fake_t.shape[1]}")
    precision = manifold_coverage(fake_t, real_t, knn_radii(real_t, k, block), block)
    recall = manifold_coverage(real_t, fake_t, knn_radii(fake_t, k, block), block)
    return precision, recall


def _tensor(features: np.ndarray | torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    t = features if isinstance(features, torch.Tensor) else torch.from_numpy(np.asarray(features))
    return t.to(device=device if device is not None else t.device, dtype=torch.float32)
