"""The latent diffusion model directory (kind "ldm"): the one place a :class:`LatentDiffusionModel` is saved
and loaded.

::

    config.json                  <backbone> / schedule / conditioner configs; extra: latent size, tokenizer,
                                 the autoencoder's original path and SHA-256, the training experiment
    <backbone>.safetensors       weights of the denoising network, e.g. unet.safetensors (the EMA weights,
                                 when written by training)
    conditioner.safetensors      weights of a trained conditioning encoder (empty for frozen/none)
    autoencoder/                 a copy of the first stage's model directory, so the model is self-contained
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ldmkit.autoencoders import load_autoencoder
from ldmkit.autoencoders.build import save_autoencoder
from ldmkit.conditioning import ConditionerConfig, load_conditioner
from ldmkit.config import from_dict, to_dict
from ldmkit.denoisers.registry import backbone_in, backbone_of, build_backbone
from ldmkit.diffusion.schedules import NoiseSchedule, ScheduleConfig
from ldmkit.errors import CheckpointError
from ldmkit.io import load_state_strict, load_weights, read_model_dir, save_model_dir
from ldmkit.io.model_dir import CONFIG_NAME
from ldmkit.model.latent_diffusion import LatentDiffusionModel

KIND = "ldm"
AUTOENCODER_DIR = "autoencoder"


def save_model(model: LatentDiffusionModel, directory: str | Path, *,
               experiment: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``directory``: weights and config atomically, then its first stage as ``autoencoder/``
    — copied byte for byte from ``model.autoencoder_source`` when it has one, else written from memory.

    The first stage is staged beside the target before anything is replaced, so saving a loaded model back onto
    its own directory (whose ``autoencoder/`` is the source) is safe.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    backbone = backbone_of(model.unet)
    cond_tensors, cond_data = model.conditioner.state_for_saving()
    source = model.autoencoder_source
    recorded = dict(model.extra.get("autoencoder") or {})
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.autoencoder.", dir=directory.parent))
    try:
        staged = staging / AUTOENCODER_DIR
        if source is None:  # converted or built in memory
            save_autoencoder(staged, model.autoencoder)
        else:
            copy_model_files(read_model_dir(source, kind="autoencoder"), staged)
        digest = read_model_dir(staged, kind="autoencoder").files.get("model")
        # Where the first stage came from: kept from a loaded model's record, else the source it was read from.
        origin = recorded.get("path") if recorded.get("sha256") == digest else None
        if origin is None and source is not None:
            origin = str(Path(source).resolve())
        extra = {key: value for key, value in model.extra.items()
                 if key not in ("latent_size", "tokenizer", "autoencoder", "experiment")}
        save_model_dir(
            directory, kind=KIND,
            config={backbone.name: to_dict(model.unet.config), "schedule": to_dict(model.schedule.config),
                    "conditioner": cond_data["config"]},
            weights={backbone.name: model.unet, "conditioner": cond_tensors},
            extra={"latent_size": list(model.latent_size), "tokenizer": cond_data.get("tokenizer"),
                   "autoencoder": {"path": origin, "sha256": digest},
                   "experiment": experiment if experiment is not None else model.extra.get("experiment", {}),
                   **extra},
        )
        # The autoencoder goes in after the atomic write; a crash here leaves the recorded origin usable.
        target = directory / AUTOENCODER_DIR
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
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
    for candidate in (info.path / AUTOENCODER_DIR, Path(reference.get("path") or "")):
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


def load_model(directory: str | Path, device: torch.device | str | None = None) -> LatentDiffusionModel:
    info = read_model_dir(directory, kind=KIND)
    autoencoder_dir = _autoencoder_dir(info)
    autoencoder = load_autoencoder(autoencoder_dir, device=device).eval().requires_grad_(False)
    backbone = backbone_in(info.config, str(info.path / CONFIG_NAME))
    unet = build_backbone(backbone, info.config[backbone.name])
    load_state_strict(unet, load_weights(info, backbone.name), str(info.path / f"{backbone.name}.safetensors"))
    cond_config = from_dict(ConditionerConfig, info.config["conditioner"])
    first_stage = autoencoder.encode if cond_config.concat.present else None
    conditioner = load_conditioner(load_weights(info, "conditioner"),
                                   {"config": info.config["conditioner"], "tokenizer": info.extra.get("tokenizer")},
                                   first_stage=first_stage, source=str(info.path / "conditioner.safetensors"))
    schedule = NoiseSchedule(from_dict(ScheduleConfig, info.config["schedule"]))
    size = info.extra.get("latent_size", [0, 0])
    return LatentDiffusionModel(unet=unet.to(device).eval().requires_grad_(False), schedule=schedule,
                                conditioner=conditioner.to(device).eval().requires_grad_(False),
                                autoencoder=autoencoder, latent_size=(int(size[0]), int(size[1])),
                                extra=info.extra, autoencoder_source=autoencoder_dir)


__all__ = ["AUTOENCODER_DIR", "KIND", "copy_model_files", "load_model", "save_model"]
