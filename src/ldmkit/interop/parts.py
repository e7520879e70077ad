"""A converted model as ldmkit configs + state dicts (ldmkit key names), before any network is built."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ldmkit.autoencoders.config import AutoencoderConfig
from ldmkit.conditioning.config import ConditionerConfig
from ldmkit.denoisers.unet_config import UNetConfig
from ldmkit.diffusion.schedules import ScheduleConfig
from ldmkit.interop.noise_augmentation import NoiseAugmentation


@dataclass
class ConvertedParts:
    """Everything ``ldm convert`` writes. ``unet`` is None for a first-stage-only checkpoint."""

    autoencoder: AutoencoderConfig
    autoencoder_state: dict[str, torch.Tensor]
    unet: UNetConfig | None = None
    unet_state: dict[str, torch.Tensor] = field(default_factory=dict)
    conditioner: ConditionerConfig | None = None
    conditioner_state: dict[str, torch.Tensor] = field(default_factory=dict)
    schedule: ScheduleConfig | None = None
    latent_size: int | None = None
    notes: list[str] = field(default_factory=list)
    tokenizer_dir: str | None = None  # a diffusers folder's tokenizer/, when the source has one
    noise_augmentation: NoiseAugmentation | None = None  # the x4 upscaler's, kept for export

    @property
    def kind(self) -> str:
        return "autoencoder" if self.unet is None else "ldm"
