"""KL-regularised autoencoder (paper §3.1 "KL-reg."): a diagonal Gaussian posterior with a small KL penalty."""

from __future__ import annotations

import torch
from torch import nn

from ldmkit.autoencoders.base import FirstStage, LatentMoments
from ldmkit.autoencoders.config import AutoencoderConfig
from ldmkit.autoencoders.distributions import DiagonalGaussian
from ldmkit.autoencoders.networks import Decoder, Encoder


class AutoencoderKL(FirstStage):
    """E(x) → q(z|x) = N(μ, σ²) ; D(z) → x̂. ``encode`` returns the scaled posterior mean."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__(cfg)
        c = cfg.latent_channels
        self.encoder = Encoder(cfg, 2 * c)
        self.quant_conv = nn.Conv2d(2 * c, 2 * c, 1)
        self.post_quant_conv = nn.Conv2d(c, c, 1)
        self.decoder = Decoder(cfg)

    @property
    def last_layer(self) -> torch.Tensor:
        return self.decoder.last_layer

    def posterior(self, x: torch.Tensor) -> DiagonalGaussian:
        """Unscaled q(z|x) for x [B, in, H, W]."""
        self._check_input(x)
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))  # moments [B, 2c, H/f, W/f]

    def _encode_raw(self, x: torch.Tensor) -> LatentMoments:
        post = DiagonalGaussian(self.quant_conv(self.encoder(x)))
        return LatentMoments(post.mean, post.std)

    def _decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))  # [B, out, h*f, w*f]

    def forward(self, x: torch.Tensor, sample_posterior: bool = True,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Reconstruct x [B, in, H, W]; aux["kl"] is KL(q(z|x) ‖ N(0, I)) per sample [B]."""
        post = self.posterior(x)
        z = post.sample(generator) if sample_posterior else post.mode()  # [B, c, h, w], unscaled
        return self._decode_raw(z), {"kl": post.kl()}
