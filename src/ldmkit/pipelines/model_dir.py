"""The latent diffusion model directory (kind "ldm").

::

    config.json                  unet / schedule / conditioner configs; extra: latent size, tokenizer,
                                 the autoencoder's original path and SHA-256, the training experiment
    unet.safetensors             EMA weights of the denoiser
    conditioner.safetensors      weights of a trained conditioning encoder (empty for frozen/none)
    autoencoder/                 a copy of the first stage's model directory, so the model is self-contained
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ldmkit.autoencoders import load_autoencoder
from ldmkit.autoencoders.base import FirstStage
from ldmkit.conditioning import ConditionerConfig, load_conditioner
from ldmkit.conditioning.base import Conditioner
from ldmkit.config import from_dict, to_dict
from ldmkit.denoisers.unet import UNet
from ldmkit.denoisers.unet_config import UNetConfig
from ldmkit.diffusion.schedules import NoiseSchedule, ScheduleConfig
from ldmkit.errors import CheckpointError
from ldmkit.io import load_state_strict, load_weights, read_model_dir, save_model_dir
from ldmkit.io.model_dir import CONFIG_NAME

KIND = "ldm"


@dataclass
class LatentDiffusionModel:
    """The parts a pipeline needs, loaded from a model directory."""

    unet: UNet
    schedule: NoiseSchedule
    conditioner: Conditioner
    autoencoder: FirstStage
    latent_size: tuple[int, int]
    extra: dict[str, Any]


def save_ldm(directory: str | Path, *, unet: torch.nn.Module, unet_config: UNetConfig,
             schedule_config: ScheduleConfig, conditioner: Conditioner, autoencoder_dir: Path,
             latent_size: tuple[int, int], experiment: dict[str, Any] | None = None) -> Path:
    directory = Path(directory)
    ae_info = read_model_dir(autoencoder_dir, kind="autoencoder")
    cond_tensors, cond_data = conditioner.state_for_saving()
    save_model_dir(
        directory, kind=KIND,
        config={"unet": to_dict(unet_config), "schedule": to_dict(schedule_config),
                "conditioner": cond_data["config"]},
        weights={"unet": unet, "conditioner": cond_tensors},
        extra={
            "latent_size": list(latent_size),
            "tokenizer": cond_data.get("tokenizer"),
            "autoencoder": {"path": str(Path(autoencoder_dir).resolve()), "sha256": ae_info.files.get("model")},
            "experiment": experiment or {},
        },
    )
    # The autoencoder copy goes in after the atomic write; a crash here leaves the original reference usable.
    target = directory / "autoencoder"
    staging = Path(tempfile.mkdtemp(prefix=".autoencoder.", dir=directory))
    try:
        copy_model_files(ae_info, staging / "copy")
        if target.exists():
            shutil.rmtree(target)
        (staging / "copy").rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def copy_model_files(info, destination: Path) -> None:
    """Copy the files the model format names (``config.json`` and each component's safetensors) and nothing
    else; a named file that is a link leading out of the model directory is refused, never followed."""
    source = info.path.resolve()
    destination.mkdir(parents=True)
    for name in (CONFIG_NAME, *(f"{component}.safetensors" for component in info.files)):
        path = info.path / name
        real = path.resolve()
        if not real.is_relative_to(source) or not real.is_file():
            raise CheckpointError(f"{path} is a link out of {info.path} or not a file; a model directory holds "
                                  "its own files: replace the link by the file it points to")
        shutil.copyfile(real, destination / name)


def _autoencoder_dir(info) -> Path:
    """The embedded copy, else the original path; its SHA-256 must match what the LDM was trained with."""
    reference = info.extra.get("autoencoder", {})
    for candidate in (info.path / "autoencoder", Path(reference.get("path", ""))):
        if (candidate / CONFIG_NAME).is_file():
            found = read_model_dir(candidate, kind="autoencoder").files.get("model")
            if reference.get("sha256") and found != reference["sha256"]:
                raise CheckpointError(
                    f"the autoencoder at {candidate} is not the one {info.path} was trained with (SHA-256 differs)"
                )
            return candidate
    raise CheckpointError(
        f"{info.path} has no autoencoder/ copy and its autoencoder {reference.get('path')} is gone; "
        "copy the autoencoder model directory to that path or into the model directory as autoencoder/"
    )


def load_ldm(directory: str | Path, device: torch.device | str | None = None) -> LatentDiffusionModel:
    info = read_model_dir(directory, kind=KIND)
    autoencoder = load_autoencoder(_autoencoder_dir(info), device=device).eval().requires_grad_(False)
    unet_config = from_dict(UNetConfig, info.config["unet"])
    unet = UNet(unet_config)
    load_state_strict(unet, load_weights(info, "unet"), str(info.path / "unet.safetensors"))
    cond_config = from_dict(ConditionerConfig, info.config["conditioner"])
    first_stage = autoencoder.encode if cond_config.concat.present else None
    conditioner = load_conditioner(load_weights(info, "conditioner"),
                                   {"config": info.config["conditioner"], "tokenizer": info.extra.get("tokenizer")},
                                   first_stage=first_stage, source=str(info.path / "conditioner.safetensors"))
    schedule = NoiseSchedule(from_dict(ScheduleConfig, info.config["schedule"]))
    unet = unet.to(device).eval().requires_grad_(False)
    conditioner = conditioner.to(device).eval().requires_grad_(False)
    size = info.extra.get("latent_size", [0, 0])
    return LatentDiffusionModel(unet=unet, schedule=schedule, conditioner=conditioner, autoencoder=autoencoder,
                                latent_size=(int(size[0]), int(size[1])), extra=info.extra)
