"""Kernel distance (KID, Bińkowski et al. 2018, "Demystifying MMD GANs", §4 / appendix A).

The unbiased estimator of the squared maximum mean discrepancy with the cubic polynomial kernel
k(x, y) = (xᵀy / d + 1)³, averaged over random subsets of both sets; returned as mean and standard
deviation over subsets. Unlike the Fréchet distance it is unbiased: its expectation is 0 when both sets
come from one distribution, so small sample counts can be compared.
"""

from __future__ import annotations

import numpy as np
import torch

from ldmkit.errors import ConfigError


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k(x, y) = (xᵀy / d + 1)³ for rows of x [n, d] and y [m, d] → [n, m]."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD² estimate between samples x [m, d] and y [n, d] (diagonals of Kxx, Kyy left out)."""
    m, n = x.shape[0], y.shape[0]
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    term_xx = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    term_yy = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return float(term_xx + term_yy - 2 * k_xy.mean())


def kernel_distance(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, *, subsets: int = 100,
                    subset_size: int = 1000, seed: int = 0,
                    device: torch.device | str | None = None) -> tuple[float, float]:
    """(mean, std) of the unbiased MMD² over ``subsets`` random subsets of ``subset_size`` from each set.

    The subset size is capped at the smaller set; subsets are drawn without replacement with a generator
    seeded by ``seed``; arithmetic is float64 on ``device`` (default: the device of ``x``).
    """
    x = _tensor(x, device)
    y = _tensor(y, x.device)
    size = min(subset_size, x.shape[0], y.shape[0])
    if size < 2:
        raise ConfigError(f"the kernel distance needs at least 2 samples in each set, got {x.shape[0]} and {y.shape[0]}")
    if subsets < 1:
        raise ConfigError(f"kid subsets must be ≥ 1, got {subsets}")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        ix = torch.from_numpy(rng.choice(x.shape[0], size, replace=False)).to(x.device)
        iy = torch.from_numpy(rng.choice(y.shape[0], size, replace=False)).to(y.device)
        values.append(mmd2_unbiased(x[ix], y[iy]))
    values_np = np.asarray(values)
    return float(values_np.mean()), float(values_np.std())


def _tensor(features: np.ndarray | torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    t = features if isinstance(features, torch.Tensor) else torch.from_numpy(np.asarray(features))
    return t.to(device=device if device is not None else t.device, dtype=torch.float64)
