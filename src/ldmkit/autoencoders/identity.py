"""The identity "autoencoder" (f = 1): diffusion in pixel space, the baseline of the paper's Fig. 6/7."""

from __future__ import annotations

import torch

from ldmkit.autoencoders.base import FirstStage, LatentMoments


class IdentityAutoencoder(FirstStage):
    """z = x (then scaled and shifted like any latent); has no parameters and needs no training."""

    def _encode_raw(self, x: torch.Tensor) -> LatentMoments:
        return LatentMoments(x, torch.zeros_like(x))

    def _decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def forward(self, x: torch.Tensor, sample_posterior: bool = True,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self._check_input(x)
        return x, {}
