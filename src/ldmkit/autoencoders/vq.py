"""VQ-regularised autoencoder (paper §3.1 "VQ-reg."), with the quantiser absorbed into the decoder.

The diffusion model works on the *continuous* pre-quantisation latents: :meth:`VQModel.encode` stops
before the quantiser and :meth:`VQModel.decode` quantises first, then decodes.
"""

from __future__ import annotations

import torch
from torch import nn

from ldmkit.autoencoders.base import FirstStage, LatentMoments
from ldmkit.autoencoders.config import AutoencoderConfig
from ldmkit.autoencoders.networks import Decoder, Encoder
from ldmkit.autoencoders.quantizer import VectorQuantizer


class VQModel(FirstStage):
    """E(x) → pre-quant conv → z (continuous) ; quantise(z) → post-quant conv → D → x̂."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__(cfg)
        c = cfg.latent_channels
        self.encoder = Encoder(cfg, c)
        self.quant_conv = nn.Conv2d(c, c, 1)
        self.quantizer = VectorQuantizer(cfg.codebook_size, c, beta=cfg.beta, ema=cfg.ema, decay=cfg.ema_decay,
                                         dead_code_threshold=cfg.dead_code_threshold)
        self.post_quant_conv = nn.Conv2d(c, c, 1)
        self.decoder = Decoder(cfg)

    @property
    def last_layer(self) -> torch.Tensor:
        return self.decoder.last_layer

    def _encode_raw(self, x: torch.Tensor) -> LatentMoments:
        z = self.quant_conv(self.encoder(x))  # [B, c, H/f, W/f], before quantisation
        return LatentMoments(z, torch.zeros_like(z))

    def _decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        z_q, _ = self.quantizer.quantize(z)  # [B, c, h, w]
        return self.decoder(self.post_quant_conv(z_q))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Decode code indices [B, h, w] → image [B, out, h·f, w·f]."""
        return self.decoder(self.post_quant_conv(self.quantizer.lookup(indices)))

    def forward(self, x: torch.Tensor, sample_posterior: bool = True,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Reconstruct x; aux holds vq_loss (codebook + β·commitment), its parts, perplexity, usage and indices.

        ``sample_posterior`` and ``generator`` are accepted for a common signature and unused.
        """
        self._check_input(x)
        z = self.quant_conv(self.encoder(x))  # [B, c, h, w]
        z_q, aux = self.quantizer(z)  # straight-through
        return self.decoder(self.post_quant_conv(z_q)), aux
