"""The x4 upscaler's noise augmentation of its low-resolution image, as a model directory records it.

Stable Diffusion's x4 upscaler was trained on low-resolution images noised to a random level of their own
schedule, the level reaching the UNet as its class label (the original ``ImageConcatWithNoiseAugmentation``,
diffusers' ``low_res_scheduler`` and ``max_noise_level``). ldmkit samples with the image clean (label 0), so
nothing in its configs uses that schedule; conversion keeps it in ``extra["noise_augmentation"]`` of the model
directory (``{"schedule": <ScheduleConfig>, "max_noise_level": int}``) so that export can write it back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ldmkit.config import from_dict, to_dict
from ldmkit.diffusion.schedules import ScheduleConfig
from ldmkit.errors import ConfigError
from ldmkit.interop.original_config import schedule_from_original

KEY = "noise_augmentation"
DIFFUSERS_MAX_NOISE_LEVEL = 350  # StableDiffusionUpscalePipeline's default when model_index.json names none


@dataclass(frozen=True)
class NoiseAugmentation:
    """The schedule that noises the low-resolution image and the highest level (= label) it was trained with."""

    schedule: ScheduleConfig
    max_noise_level: int

    def __post_init__(self) -> None:
        level = self.max_noise_level
        if isinstance(level, bool) or not isinstance(level, int) or level < 0:
            raise ConfigError(f"{KEY}.max_noise_level must be a whole number ≥ 0; got {level!r}")
        if level >= self.schedule.num_timesteps:
            raise ConfigError(f"{KEY}.max_noise_level {level} is past the end of its schedule "
                              f"({self.schedule.num_timesteps} steps)")

    def record(self) -> dict[str, Any]:
        """Plain data for the model directory's ``extra``."""
        return {"schedule": to_dict(self.schedule), "max_noise_level": self.max_noise_level}


def from_record(record: Any) -> NoiseAugmentation:
    """The :class:`NoiseAugmentation` of ``extra["noise_augmentation"]``; a ConfigError when it is malformed."""
    if not isinstance(record, Mapping) or set(record) != {"schedule", "max_noise_level"}:
        raise ConfigError(f"the model's extra.{KEY} must hold exactly 'schedule' and 'max_noise_level'")
    return NoiseAugmentation(from_dict(ScheduleConfig, record["schedule"], f"{KEY}.schedule"),
                             record["max_noise_level"])


def from_original(params: Mapping[str, Any]) -> NoiseAugmentation | None:
    """From an original LatentUpscaleDiffusion's ``low_scale_config`` (None when the YAML has none)."""
    low = params.get("low_scale_config")
    if not isinstance(low, Mapping):
        return None
    p = low.get("params") or {}
    # register_schedule's keys and defaults in the original: "linear" (in sqrt β), 1000 steps, 1e-4 … 0.02.
    schedule = schedule_from_original(dict(p.get("noise_schedule_config") or {}))
    return NoiseAugmentation(schedule, int(p.get("max_noise_level", 1000)))


def for_table(augmentation: NoiseAugmentation, class_embeddings: int) -> NoiseAugmentation:
    """``augmentation`` checked against the UNet's noise-level table: every level up to the maximum is a label."""
    if augmentation.max_noise_level >= class_embeddings:
        raise ConfigError(f"{KEY}.max_noise_level {augmentation.max_noise_level} has no row in the UNet's "
                          f"noise-level table ({class_embeddings} labels)")
    return augmentation
