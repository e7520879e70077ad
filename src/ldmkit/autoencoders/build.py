"""Building, saving and loading first stages, and measuring the latent scale (paper §3.1, appendix G).

A saved autoencoder is a model directory (``ldmkit.io``) of kind ``"autoencoder"`` whose config is the
:class:`AutoencoderConfig` as plain data, including the measured ``scale_factor`` / ``shift_factor``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

from ldmkit.autoencoders.base import FirstStage
from ldmkit.autoencoders.config import AutoencoderConfig
from ldmkit.autoencoders.identity import IdentityAutoencoder
from ldmkit.autoencoders.kl import AutoencoderKL
from ldmkit.autoencoders.vq import VQModel
from ldmkit.config import Registry, from_dict, to_dict
from ldmkit.errors import CheckpointError, ConfigError, DataError
from ldmkit.io import load_state_strict, load_weights, read_model_dir, save_model_dir

MODEL_KIND = "autoencoder"

AUTOENCODERS: Registry[Callable[[AutoencoderConfig], FirstStage]] = Registry("autoencoder kind")
AUTOENCODERS.register("kl")(AutoencoderKL)
AUTOENCODERS.register("vq")(VQModel)
AUTOENCODERS.register("identity")(IdentityAutoencoder)


def build_autoencoder(cfg: AutoencoderConfig) -> FirstStage:
    """A freshly initialised first stage of ``cfg.kind``."""
    return AUTOENCODERS.get(cfg.kind)(cfg)


def save_autoencoder(path: str | Path, model: FirstStage, cfg: AutoencoderConfig | None = None,
                     extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` as a model directory (config: ``cfg`` or ``model.config``).

    The latent scaling saved is always the model's own (set by :func:`set_latent_scale`), even when ``cfg``
    was given.
    """
    cfg = cfg or model.config
    cfg = dataclasses.replace(cfg, scale_factor=model.scale_factor, shift_factor=model.shift_factor)
    return save_model_dir(path, kind=MODEL_KIND, config=to_dict(cfg), weights={"model": model}, extra=extra)


def load_autoencoder(path: str | Path, device: torch.device | str | None = None) -> FirstStage:
    """Load a saved first stage (in eval mode, on ``device`` or the CPU)."""
    info = read_model_dir(path, kind=MODEL_KIND)
    try:
        cfg = from_dict(AutoencoderConfig, info.config)
    except ConfigError as exc:
        raise CheckpointError(f"{info.path}: its autoencoder config is not valid ({exc})") from None
    model = build_autoencoder(cfg)
    load_state_strict(model, load_weights(info), str(info.path))
    model.eval()
    return model.to(device) if device is not None else model


def set_latent_scale(model: FirstStage, std: float, mean: float | None = None) -> None:
    """Store scale_factor = 1/std (and shift_factor = mean when given), so encode() gives unit-variance latents."""
    if not (math.isfinite(std) and std > 0):
        raise DataError(f"latent standard deviation must be a positive number, got {std}")
    model.set_latent_scale(1.0 / std, mean)


@torch.no_grad()
def latent_statistics(model: FirstStage, images: Iterable[torch.Tensor], *, max_batches: int | None = None,
                      sample_posterior: bool = True, generator: torch.Generator | None = None
                      ) -> tuple[float, float]:
    """Mean and standard deviation of the *unscaled* latents over all elements of ``images`` batches.

    As in the LDM code, KL latents are samples of the posterior (what the diffusion model is trained on);
    pass the result's std to :func:`set_latent_scale`. Statistics are accumulated in float64.
    """
    total = total_sq = 0.0
    count = 0
    param = next(model.parameters(), None)
    for i, x in enumerate(images):
        if max_batches is not None and i >= max_batches:
            break
        if param is not None:
            x = x.to(param.device)
        moments = model.encode_distribution(x, scaled=False)
        z = moments.sample(generator) if sample_posterior else moments.mean
        z = z.double()
        total += float(z.sum())
        total_sq += float(z.pow(2).sum())
        count += z.numel()
    if count == 0:
        raise DataError("no images to measure the latent scale on")
    mean = total / count
    var = max(total_sq / count - mean * mean, 0.0) * count / max(count - 1, 1)
    return mean, math.sqrt(var)


__all__ = [
    "AUTOENCODERS",
    "MODEL_KIND",
    "build_autoencoder",
    "latent_statistics",
    "load_autoencoder",
    "save_autoencoder",
    "set_latent_scale",
]
