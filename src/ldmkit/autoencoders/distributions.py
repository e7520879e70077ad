"""The diagonal Gaussian posterior q(z|x) of the KL-regularised autoencoder (paper §3.1)."""

from __future__ import annotations

import torch

from ldmkit.autoencoders.base import LatentMoments

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


class DiagonalGaussian:
    """N(mean, diag(exp(logvar))) from the encoder's ``2c`` output channels (mean first, log-variance second).

    The log-variance is clamped to ``[-30, 20]`` so that ``exp`` stays finite in float32.
    """

    def __init__(self, moments: torch.Tensor):
        # moments: [B, 2c, h, w]
        self.mean, logvar = torch.chunk(moments, 2, dim=1)  # [B, c, h, w] each
        self.logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mean + std · ε, ε ~ N(0, I) drawn from ``generator`` (reparameterised: differentiable)."""
        return LatentMoments(self.mean, self.std).sample(generator)  # [B, c, h, w]

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q ‖ N(0, I)) = ½ Σ (μ² + σ² − 1 − log σ²), summed over all non-batch dimensions → [B]."""
        terms = self.mean.pow(2) + self.var - 1.0 - self.logvar  # [B, c, h, w]
        return 0.5 * terms.flatten(1).sum(dim=1)
