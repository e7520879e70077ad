"""The paper's first-stage models (appendix G, Tab. 8; hyper-parameters as released with the LDM code).

All are trained on 256×256 images with ``base_channels = 128`` and two ResNet blocks per level.
``attention_factors`` translates the released ``attn_resolutions`` (pixels of a 256-pixel input) into
downsampling factors, so the same model runs at any size. KL models use LDM's loss (summed nll,
kl_weight 1e-6, discriminator from step 50001, weight 0.5); VQ models use taming-transformers' loss
(mean reduction, codebook weight 1): vq-f4 and vq-f16 as released (discriminator weight 0.75 from
step 0 / 250001); vq-f8 with a 2-layer discriminator from step 1 at weight 0.6.
"""

from __future__ import annotations

import dataclasses

from ldmkit.autoencoders.config import AutoencoderConfig
from ldmkit.autoencoders.losses import AutoencoderLossConfig
from ldmkit.config import named_preset

_KL_LOSS = AutoencoderLossConfig(reduction="sum", kl_weight=1e-6, disc_start=50001, disc_weight=0.5)
_VQ_LOSS = AutoencoderLossConfig(reduction="mean", codebook_weight=1.0, disc_start=250001, disc_weight=0.75)
_VQ_F8_LOSS = dataclasses.replace(_VQ_LOSS, disc_start=1, disc_weight=0.6, disc_layers=2)


def _kl(mult: tuple[int, ...], z: int, attn: tuple[int, ...] = ()) -> AutoencoderConfig:
    return AutoencoderConfig(kind="kl", base_channels=128, channel_mult=mult, num_res_blocks=2,
                             latent_channels=z, attention_factors=attn)


def _vq(mult: tuple[int, ...], z: int, codes: int, attn: tuple[int, ...] = ()) -> AutoencoderConfig:
    return AutoencoderConfig(kind="vq", base_channels=128, channel_mult=mult, num_res_blocks=2,
                             latent_channels=z, codebook_size=codes, attention_factors=attn)


#: name → (autoencoder config, loss config)
AUTOENCODER_PRESETS: dict[str, tuple[AutoencoderConfig, AutoencoderLossConfig]] = {
    "kl-f4": (_kl((1, 2, 4), 3), _KL_LOSS),
    "kl-f8": (_kl((1, 2, 4, 4), 4), _KL_LOSS),
    "kl-f16": (_kl((1, 1, 2, 2, 4), 16, (16,)), _KL_LOSS),
    "kl-f32": (_kl((1, 1, 2, 2, 4, 4), 64, (16, 32)), _KL_LOSS),
    "vq-f4": (_vq((1, 2, 4), 3, 8192), dataclasses.replace(_VQ_LOSS, disc_start=0)),
    "vq-f8": (_vq((1, 2, 2, 4), 4, 16384, (8,)), _VQ_F8_LOSS),
    "vq-f8-n256": (_vq((1, 2, 2, 4), 4, 256, (8,)), _VQ_F8_LOSS),
    "vq-f16": (_vq((1, 1, 2, 2, 4), 8, 16384, (16,)), dataclasses.replace(_VQ_LOSS, disc_layers=2)),
    "identity": (AutoencoderConfig(kind="identity"), AutoencoderLossConfig(perceptual_weight=0.0)),
}


def autoencoder_preset(name: str) -> tuple[AutoencoderConfig, AutoencoderLossConfig]:
    """(autoencoder config, loss config) of a named paper model, e.g. ``"kl-f8"``."""
    return named_preset(AUTOENCODER_PRESETS, name, "autoencoder")
