"""Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017, the "F" of FID).

    d² = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½)

Tr((Σ₁Σ₂)^½) is computed without a general matrix square root: Σ₁Σ₂ is similar to the symmetric
positive semi-definite A = Σ₁^½ Σ₂ Σ₁^½, so the trace is Σ √λᵢ(A), with both square roots taken by
symmetric eigendecompositions in float64 (small negative eigenvalues from rounding are clipped to 0).
This avoids the complex parts and singular-product failures of ``scipy.linalg.sqrtm`` (no eps offset needed).
"""

from __future__ import annotations

import numpy as np
import torch

from ldmkit.errors import ConfigError


def mean_and_covariance(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] of features [N, D], in float64."""
    x = _as_float64(features)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ConfigError(f"a mean and covariance need features [N ≥ 2, D], got shape {list(x.shape)}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (float64)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ConfigError(
            f"feature statistics do not match: means {mu1.shape} vs {mu2.shape}, covariances {sigma1.shape} vs "
            f"{sigma2.shape}"
        )
    root1 = _sqrt_psd(sigma1)
    product = root1 @ sigma2 @ root1
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((product + product.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt
    return float(max(value, 0.0))


def frechet_distance_from_features(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> float:
    """Fréchet distance between two feature sets [N, D] and [M, D]."""
    return frechet_distance(*mean_and_covariance(x), *mean_and_covariance(y))


def _as_float64(features: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().double().numpy()
    return np.asarray(features, dtype=np.float64)
