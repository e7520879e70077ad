"""First-stage autoencoders (paper §3.1): KL- and VQ-regularised, and the identity (pixel space).

The diffusion code uses only the common interface of :class:`FirstStage`: ``encode`` (scaled latents),
``encode_distribution`` (scaled mean and std), ``decode``, ``downsample_factor``, ``latent_channels``.
"""

from ldmkit.autoencoders.base import FirstStage, LatentMoments
from ldmkit.autoencoders.build import (
    AUTOENCODERS,
    build_autoencoder,
    latent_statistics,
    load_autoencoder,
    save_autoencoder,
    set_latent_scale,
)
from ldmkit.autoencoders.config import AutoencoderConfig
from ldmkit.autoencoders.discriminator import NLayerDiscriminator
from ldmkit.autoencoders.distributions import DiagonalGaussian
from ldmkit.autoencoders.identity import IdentityAutoencoder
from ldmkit.autoencoders.kl import AutoencoderKL
from ldmkit.autoencoders.losses import (
    AutoencoderLoss,
    AutoencoderLossConfig,
    adaptive_weight,
    build_autoencoder_loss,
    hinge_d_loss,
    vanilla_d_loss,
)
from ldmkit.autoencoders.networks import Decoder, Encoder
from ldmkit.autoencoders.presets import AUTOENCODER_PRESETS, autoencoder_preset
from ldmkit.autoencoders.quantizer import VectorQuantizer
from ldmkit.autoencoders.vq import VQModel

__all__ = [
    "AUTOENCODERS",
    "AUTOENCODER_PRESETS",
    "AutoencoderConfig",
    "AutoencoderKL",
    "AutoencoderLoss",
    "AutoencoderLossConfig",
    "Decoder",
    "DiagonalGaussian",
    "Encoder",
    "FirstStage",
    "IdentityAutoencoder",
    "LatentMoments",
    "NLayerDiscriminator",
    "VQModel",
    "VectorQuantizer",
    "adaptive_weight",
    "autoencoder_preset",
    "build_autoencoder",
    "build_autoencoder_loss",
    "hinge_d_loss",
    "latent_statistics",
    "load_autoencoder",
    "save_autoencoder",
    "set_latent_scale",
    "vanilla_d_loss",
]
