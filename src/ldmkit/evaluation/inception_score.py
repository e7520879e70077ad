"""Inception Score (Salimans et al. 2016, §4): exp(E_x KL(p(y|x) ‖ p(y))), mean ± std over splits.

Defined only for the standard FID Inception network's 1008-way classifier (bias-free logits, as in the
original code); with any other network the number would not be an Inception Score.
"""

from __future__ import annotations

import numpy as np
import torch

from ldmkit.errors import ConfigError


def inception_score(logits: np.ndarray | torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """(mean, std) of the score over ``splits`` consecutive chunks of class logits [N, K] (float64)."""
    x = logits if isinstance(logits, torch.Tensor) else torch.from_numpy(np.asarray(logits))
    x = x.detach().cpu().double()
    if x.ndim != 2 or x.shape[0] < splits:
        raise ConfigError(f"the Inception Score with {splits} splits needs logits [N ≥ {splits}, K], got {list(x.shape)}")
    log_p = torch.log_softmax(x, dim=1)  # [N, K]
    scores = []
    for chunk in torch.tensor_split(log_p, splits):
        log_marginal = torch.logsumexp(chunk, dim=0) - np.log(chunk.shape[0])  # log p(y) [K]
        kl = (chunk.exp() * (chunk - log_marginal)).sum(dim=1)  # [n]
        scores.append(float(kl.mean().exp()))
    return float(np.mean(scores)), float(np.std(scores))
