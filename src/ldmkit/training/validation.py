"""Knowing when a latent diffusion model is good: scores on held-out data during training.

Every ``train.validate_every`` steps, on the EMA weights:

- ``loss`` and ``loss_t<T>``: the denoising loss (plain MSE on the parameterisation's target) of ``images``
  held-out latents at fixed timesteps with fixed noise, so consecutive values differ only by the weights;
- with ``fd_samples`` > 0, ``fd``: FD-EffLite0 of that many samples (classes or captions of the held-out
  items, cycled) against the held-out images — the same code as ``ldm eval generation``, so the number equals
  the offline one of the same weights and settings.

The best model (lowest ``fd`` when measured, else lowest ``loss``) is kept in ``RUN/best`` by the loop.
Held-out data: the ``val`` split of the training data, or a latent cache of it (``latents``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ldmkit.config import option
from ldmkit.errors import ConfigError


@dataclass(frozen=True)
class ValidationConfig:
    """Held-out scores (run every ``train.validate_every`` steps)."""

    images: int = option(64, help="held-out items scored by the validation loss (and FD's reference)", min=2)
    latents: str | None = option(None, help="latent cache of the held-out split (`ldm encode --split val`); null: "
                                            "encode the val split of the training data")
    timesteps: tuple[int, ...] = option((100, 300, 500, 700, 900), help="fixed timesteps of the validation loss",
                                        min=0)
    fd_samples: int = option(0, help="samples scored by FD-EffLite0 against the held-out images (0: loss only)",
                             min=0)
    sampler: str = option("dpm++2m", help="sampler of the FD samples")
    steps: int = option(20, help="sampling steps of the FD samples", min=1)
    guidance: float = option(2.0, help="classifier-free guidance of the FD samples", min=0.0)
    seed: int = option(0, help="seed of the held-out noise and of the FD samples", min=0)

    @property
    def best_by(self) -> str:
        return "fd" if self.fd_samples else "loss"


class HeldOut:
    """The held-out items, encoded once: latents [N, c, h, w] on the CPU, their conditions and fixed noise."""

    def __init__(self, latents: torch.Tensor, labels: list[int] | None, captions: list[str] | None,
                 images: torch.Tensor | None, seed: int):
        self.latents = latents
        self.labels, self.captions, self.images = labels, captions, images
        self.noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
        self.reference = None  # FD's statistics of the held-out images, computed at the first FD

    @classmethod
    def build(cls, config: ValidationConfig, data, autoencoder, device: torch.device) -> "HeldOut":
        from ldmkit.data import build_dataset
        from ldmkit.data.latents import LatentDataset

        if config.latents:
            dataset = LatentDataset(config.latents, sample_posterior=False)
            items = [dataset[i] for i in range(min(config.images, len(dataset)))]
            latents = torch.stack([item["latent"] for item in items]).float()
            images = None
        else:
            dataset = build_dataset(data, split="val")
            if not hasattr(dataset, "__len__"):
                raise ConfigError("validation needs a held-out split that can be indexed; give validation.latents")
            items = [dataset[i] for i in range(min(config.images, len(dataset)))]
            images = torch.stack([item["image"] for item in items])
            with torch.no_grad():
                latents = torch.cat([autoencoder.encode(images[lo:lo + 32].to(device)).float().cpu()
                                     for lo in range(0, len(images), 32)])
        if len(items) < 2:
            raise ConfigError(f"the held-out split has {len(items)} item(s); validation needs at least 2 "
                              "(raise data.val_fraction or give validation.latents)")
        labels = [int(item["label"]) for item in items] if all("label" in item for item in items) else None
        captions = [str(item.get("caption", "")) for item in items]
        return cls(latents, labels, captions if any(captions) else None, images, config.seed)


def validation_scores(model, held_out: HeldOut, config: ValidationConfig) -> dict[str, float]:
    """The scores of ``model`` (a :class:`~ldmkit.model.LatentDiffusionModel`) on ``held_out``."""
    from ldmkit.diffusion.losses import diffusion_loss

    device = model.device
    takes = model.conditioning
    request = _request(takes, held_out)
    cond, _, _ = model.condition(**request)
    z0, noise = held_out.latents.to(device), held_out.noise.to(device)
    f = model.autoencoder.downsample_factor
    cond = model.with_sizes(cond, z0.shape[0], z0.shape[-2] * f, z0.shape[-1] * f)  # a size-conditioned model: full-size images
    scores: dict[str, float] = {}
    with torch.no_grad():
        for t in config.timesteps:
            if not 0 <= t < model.schedule.num_timesteps:
                raise ConfigError(f"validation.timesteps: {t} is outside the schedule's "
                                  f"0..{model.schedule.num_timesteps - 1}")
            loss, _ = diffusion_loss(model.unet, z0, cond, model.schedule, noise=noise,
                                     t=torch.full((z0.shape[0],), t, device=device))
            scores[f"loss_t{t}"] = float(loss)
    scores["loss"] = sum(scores.values()) / len(scores)
    if config.fd_samples:
        scores["fd"] = _fd(model, held_out, config, request)
    return scores


def _request(takes, held_out: HeldOut) -> dict[str, Any]:
    if takes.takes_labels:
        if held_out.labels is None:
            raise ConfigError("the held-out items have no class labels for this class-conditional model")
        return {"class_label": held_out.labels}
    if takes.takes_text:
        if held_out.captions is None:
            raise ConfigError("the held-out items have no captions for this text-conditional model")
        return {"prompt": held_out.captions}
    return {"n": held_out.latents.shape[0]}


def _fd(model, held_out: HeldOut, config: ValidationConfig, request: dict[str, Any]) -> float:
    from ldmkit.evaluation.evaluate import compute_reference_stats
    from ldmkit.evaluation.generation import evaluate_generation
    from ldmkit.pipelines.text2img import LatentDiffusionPipeline

    if held_out.reference is None:
        images = held_out.images
        if images is None:  # a latent cache: the reference is the decoded held-out latents
            images = torch.cat([model.decode(held_out.latents[lo:lo + 32]).cpu()
                                for lo in range(0, held_out.latents.shape[0], 32)])
        held_out.reference = compute_reference_stats(images, "efflite0", source="held-out split", device=model.device)
    pipe = LatentDiffusionPipeline(model)
    conditions = {"class_labels": request["class_label"]} if "class_label" in request else (
        {"prompts": request["prompt"]} if "prompt" in request else {})
    result = evaluate_generation(pipe, held_out.reference, n=config.fd_samples, sampler=config.sampler,
                                 steps=config.steps, guidance=config.guidance, seed=config.seed, metrics=("fd",),
                                 batch_size=min(config.fd_samples, 64), progress=False, **conditions)
    return float(next(value for name, value in result["metrics"].items() if name.startswith("FD")))


__all__ = ["HeldOut", "ValidationConfig", "validation_scores"]
