"""The training stages of ``ldm fit``, each built from the plan and run with the library's own trainers:
the autoencoder (``RUN/autoencoder``, or a reused one checked against bicubic), the latent cache
(``RUN/latents``, ``ldm encode``'s writer) and the diffusion model (``RUN/diffusion``). Each trainer resumes
from its run directory, so a stage interrupted half-way continues at its last checkpoint."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from ldmkit.data import DataConfig
from ldmkit.errors import ConfigError
from ldmkit.fit.plan import Plan
from ldmkit.training.config import TrainConfig

CHECK_IMAGES = 64  # training images a reused autoencoder reconstructs before it is accepted


def data_config(plan: Plan, folder: str, label_source: str) -> DataConfig:
    """The folder at the plan's size; flips off (captions may say left and right); the plan's held-out split."""
    return DataConfig(source="folder", path=str(Path(folder).expanduser().resolve()), resolution=plan.resolution,
                      channels=plan.channels, label_source=label_source, val_fraction=plan.val_fraction,
                      split_seed=0, flip=False)


def _train_config(plan: Plan, stage: str, out: Path, device: str, init_from: str = "") -> TrainConfig:
    part = plan.ae if stage == "ae" else plan.ldm
    return TrainConfig(out=str(out), steps=part.steps, batch_size=part.batch, lr=part.lr,
                       warmup_steps=part.warmup_steps, device=device, max_minutes=part.minutes,
                       image_every=part.steps, checkpoint_every=max(100, part.steps // 10),
                       num_workers=0 if plan.device == "cpu" else 8, log_every=max(1, min(10, part.steps // 10)),
                       init_from=init_from)


def train_autoencoder(plan: Plan, data: DataConfig, run: Path, device: str) -> Path:
    """Train (or resume) the first stage in RUN/autoencoder; returns its model directory."""
    from ldmkit.data import build_dataset
    from ldmkit.training.autoencoder_task import AutoencoderExperiment, AutoencoderTask
    from ldmkit.training.loop import train

    experiment = AutoencoderExperiment(data=data, model=plan.autoencoder, loss=plan.ae_loss,
                                       train=_train_config(plan, "ae", run / "autoencoder", device),
                                       scale_samples=512)
    dataset = build_dataset(data, split="train")
    return train(AutoencoderTask(experiment, dataset), experiment.train, dataset, experiment)


def check_reused_autoencoder(autoencoder: str, data: DataConfig, device: torch.device) -> dict[str, Any]:
    """Reconstruct a sample of the training images with ``autoencoder`` and with bicubic at the same number of
    values; refuse an autoencoder that does worse than bicubic on PSNR (it was trained for other images)."""
    from ldmkit.autoencoders import load_autoencoder
    from ldmkit.data import build_dataset
    from ldmkit.evaluation.reconstruction_eval import evaluate_reconstruction
    from ldmkit.evaluation.sources import dataset_batches

    model = load_autoencoder(autoencoder, device=device)
    if model.config.in_channels != data.channels:
        raise ConfigError(f"--autoencoder {autoencoder} takes {model.config.in_channels}-channel images and these "
                          f"have {data.channels}; give one trained on {'grey' if data.channels == 1 else 'colour'} "
                          "images, or drop --autoencoder to train one")
    dataset = build_dataset(data, split="train")
    result = evaluate_reconstruction(model, dataset_batches(dataset, batch_size=16, limit=CHECK_IMAGES),
                                     device=device, examples=0)
    ae, bicubic = result["metrics"]["autoencoder"]["psnr"], result["metrics"]["bicubic"]["psnr"]
    if ae < bicubic:
        raise ConfigError(f"--autoencoder {autoencoder} reconstructs these images worse than bicubic at the same "
                          f"size (PSNR {ae:.2f} vs {bicubic:.2f} dB on {result['num_images']} images); drop "
                          "--autoencoder to train one for them")
    return {"psnr": round(ae, 3), "bicubic_psnr": round(bicubic, 3), "images": result["num_images"]}


def encode_latents(autoencoder: Path, data: DataConfig, out: Path, device: torch.device, batch: int) -> Path:
    """The latent cache of the training split (``ldm encode``'s writer: resumable, shared over ranks)."""
    from ldmkit.autoencoders import load_autoencoder
    from ldmkit.config import to_dict
    from ldmkit.data import build_dataset
    from ldmkit.data.latents import autoencoder_record, write_latent_cache
    from ldmkit.io import read_model_dir
    from ldmkit.runtime import autocast_dtype

    info = read_model_dir(autoencoder, kind="autoencoder")
    dataset = build_dataset(dataclasses.replace(data, flip=False), split="train")
    model = load_autoencoder(autoencoder, device=device).eval()
    dtype = autocast_dtype(device, "auto")

    def encode(images: torch.Tensor):
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            moments = model.encode_distribution(images.to(device))  # [B, c, h, w] each
        return moments.mean, (moments.std if model.config.kind == "kl" else None)

    meta = {"autoencoder": autoencoder_record(info), "data": to_dict(data), "split": "train",
            "precision": str(dtype or torch.float32).removeprefix("torch.")}
    return write_latent_cache(out, dataset, encode, shard_size=4096, batch_size=batch, meta=meta)


def train_diffusion(plan: Plan, data: DataConfig, autoencoder: Path, latents: Path, run: Path, device: str) -> Path:
    """Train (or resume) the latent diffusion model on the cache in RUN/diffusion; returns its model directory."""
    from ldmkit.data.latents import LatentDataset
    from ldmkit.training.diffusion_task import DiffusionExperiment, DiffusionTask, PreviewConfig, training_dataset
    from ldmkit.training.loop import train

    experiment = DiffusionExperiment(
        autoencoder=str(autoencoder), latents=str(latents), data=data, unet=plan.unet, schedule=plan.schedule,
        conditioner=plan.conditioner, ema_decay=plan.ema_decay,
        train=_train_config(plan, "ldm", run / "diffusion", device, init_from=plan.init_from),
        preview=PreviewConfig(count=8, steps=plan.eval.sampler_steps, guidance=plan.eval.guidance))
    dataset = LatentDataset(str(latents))
    task = DiffusionTask(experiment, dataset, dataset.captions)
    return train(task, experiment.train, training_dataset(experiment, dataset), experiment)


__all__ = ["check_reused_autoencoder", "data_config", "encode_latents", "train_autoencoder", "train_diffusion"]
