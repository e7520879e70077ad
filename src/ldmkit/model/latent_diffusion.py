"""One latent diffusion model (paper §3): ε_θ(z_t, t, τ_θ(y)) over the latents of a first stage (E, D).

Everything a task needs from the model goes through this object — the condition of a request
(:meth:`LatentDiffusionModel.condition`), the denoiser at a noise level (:meth:`denoiser`), the way into and
out of latent space (:meth:`encode` / :meth:`decode`) and the sizes it accepts (:meth:`latent_shape`) — so
a pipeline never reassembles the parts, and a converted checkpoint is usable as soon as it is one of these.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ldmkit.autoencoders.base import FirstStage
from ldmkit.conditioning.base import Conditioner
from ldmkit.conditioning.config import ConditionerConfig
from ldmkit.conditioning.sizes import requested_sizes
from ldmkit.conditioning.types import Conditioning
from ldmkit.denoisers.wrapper import Denoiser
from ldmkit.diffusion.schedules import NoiseSchedule
from ldmkit.errors import ConfigError
from ldmkit.nn.tiles import TileGrid


class Conditions(NamedTuple):
    """The condition of a request, its classifier-free-guidance counterpart and the number of images."""

    cond: Conditioning
    uncond: Conditioning
    count: int


@dataclass
class LatentDiffusionModel:
    """The parts of a latent diffusion model; ``latent_size`` (h, w) is the latent size it was trained at.

    ``extra`` carries what the model directory records beside the weights (the autoencoder's provenance, the
    training experiment); ``autoencoder_source`` is the model directory the first stage was read from, which
    :meth:`save` copies byte for byte (``None``: the first stage is written from memory, e.g. after conversion).
    """

    unet: torch.nn.Module
    schedule: NoiseSchedule
    conditioner: Conditioner
    autoencoder: FirstStage
    latent_size: tuple[int, int]
    extra: dict[str, Any] = field(default_factory=dict)
    autoencoder_source: Path | None = None
    #: What :meth:`decode` calls in place of ``autoencoder.decode`` when set: its compiled form (a pipeline's
    #: ``optimize()``). Not saved.
    fast_decode: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False, compare=False)

    # ----- what the model is ------------------------------------------------------------------------
    @property
    def conditioning(self) -> ConditionerConfig:
        """What the model is conditioned on (``takes_text``, ``takes_labels``, ``concat.inpainting``, …)."""
        return self.conditioner.config

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) in pixels of the trained latent size."""
        f = self.autoencoder.downsample_factor
        return self.latent_size[0] * f, self.latent_size[1] * f

    @property
    def takes_guidance(self) -> bool:
        """Whether the network takes the guidance scale as an input (a guidance-distilled student, ``ldm distill``):
        then guidance costs no second pass and no null condition."""
        return bool(getattr(self.unet.config, "guidance_embed", False))

    @property
    def sampling_defaults(self) -> dict[str, Any]:
        """The sampler and steps a call that names none uses: what the model records (``extra["sampling"]``,
        e.g. a distilled student's ``lcm`` at 4 steps), else :class:`~ldmkit.samplers.SamplerOptions`' own."""
        from ldmkit.samplers.options import SamplerOptions

        recorded = self.extra.get("sampling") or {}
        plain = SamplerOptions()
        return {"sampler": recorded.get("sampler", plain.sampler), "steps": recorded.get("steps", plain.steps)}

    @property
    def takes_sizes(self) -> bool:
        """Whether the network is size-conditioned (``conditioner.size_conditioning``): every call then carries
        ``Conditioning.sizes`` (:meth:`with_sizes`)."""
        return bool(getattr(self.unet.config, "size_embed", False))

    def with_sizes(self, cond: Conditioning | None, count: int, height: int, width: int,
                   original_size: tuple[int, int] | None = None,
                   crop_top_left: tuple[int, int] = (0, 0)) -> Conditioning | None:
        """``cond`` of ``count`` images with the sizes route of ``height × width``-pixel outputs when the network takes
        one (the original size defaults to the output size, the crop to (0, 0)); ``cond`` itself otherwise."""
        if cond is None or not self.takes_sizes:
            return cond
        sizes = requested_sizes(count, height, width, original_size, crop_top_left, device=self.device)
        return dataclasses.replace(cond, sizes=sizes)

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: the autoencoder's f times the UNet's downsampling."""
        return self.autoencoder.downsample_factor * self.unet.config.downsample_factor

    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        """(c, h, w) of the latent of a ``height × width`` image (default: the trained size); a one-line
        ConfigError for a size the autoencoder and the UNet cannot both divide."""
        f, multiple = self.autoencoder.downsample_factor, self.size_multiple
        h = height if height is not None else self.image_size[0]
        w = width if width is not None else self.image_size[1]
        if h % multiple or w % multiple or h <= 0 or w <= 0:
            raise ConfigError(f"image size {h}x{w} is not a positive multiple of {multiple} "
                              f"(autoencoder f={f} × UNet downsampling {multiple // f})")
        return self.autoencoder.latent_channels, h // f, w // f

    # ----- the three ways in and out ----------------------------------------------------------------
    def denoiser(self, network: torch.nn.Module | None = None) -> Denoiser:
        """The denoiser D(z_t, t, c) of this model's schedule around ``network`` (default: the UNet)."""
        return Denoiser(network if network is not None else self.unet, self.schedule)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images [N, C, H, W] in [-1, 1] → scaled latents [N, c, H/f, W/f] (the posterior mode), float32."""
        return self.autoencoder.encode(images.to(self.device, self._first_stage_dtype(images))).float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, *, tile: tuple[int, int] | None = None,
               overlap: int | None = None) -> torch.Tensor:
        """Scaled latents [N, c, h, w] → images [N, C, h·f, w·f] clamped to [-1, 1], float32.

        ``tile`` (h, w in latent cells): decode one image and one overlapping tile at a time and blend the
        tiles, so the decoder's memory is that of one tile whatever the image size; ``overlap`` (latent cells,
        default a quarter of the tile) is how far neighbouring tiles share cells.
        """
        if tile is not None and (latents.shape[-2] > tile[0] or latents.shape[-1] > tile[1]):
            overlap = min(tile) // 4 if overlap is None else overlap
            grid = TileGrid(latents.shape[-2], latents.shape[-1], tile, overlap)
            f, channels = self.autoencoder.downsample_factor, self.autoencoder.config.out_channels
            return torch.cat([grid.blend(self.decode, latent[None].to(self.device), in_scale=1, out_scale=f,
                                         out_channels=channels).clamp(-1, 1) for latent in latents])
        decode = self.fast_decode or self.autoencoder.decode
        images = decode(latents.to(self.device, self._first_stage_dtype(latents)))
        return images.float().clamp(-1, 1)

    def _first_stage_dtype(self, given: torch.Tensor) -> torch.dtype:
        weight = next(self.autoencoder.parameters(), None)  # bf16 after a pipeline's optimize(); none for f = 1
        return weight.dtype if weight is not None else given.dtype

    # ----- conditions -------------------------------------------------------------------------------
    def condition(self, prompt: str | Sequence[str] | None = None, class_label: int | Sequence[int] | None = None,
                  negative_prompt: str | Sequence[str] | None = None, n: int | None = None) -> Conditions:
        """The condition of a request and the null condition guidance contrasts it with (paper §3.3).

        ``n`` cycles the prompts or labels to that many images. A request the model cannot take (a prompt for a
        class model, a label out of range, nothing for a conditional model) is a one-line ConfigError.
        """
        kind, takes = self.conditioning.kind, self.conditioning
        if prompt is not None and not takes.takes_text:
            raise ConfigError(f"this model is conditioned on '{kind}', not on text; drop --prompt"
                              + (" and give --class" if takes.takes_labels else ""))
        if class_label is not None and not takes.takes_labels:
            raise ConfigError(f"this model is conditioned on '{kind}', not on class labels; drop --class")
        device = self.device
        if takes.takes_text:
            if prompt is None:
                raise ConfigError("this is a text-conditional model: give a prompt")
            prompts = cycle_to([prompt] if isinstance(prompt, str) else list(prompt), n)
            cond = self.conditioner.encode_prompts(prompts)
            if negative_prompt is None:
                return Conditions(cond, self.conditioner.null(len(prompts), device), len(prompts))
            negatives = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
            return Conditions(cond, self.conditioner.encode_prompts(cycle_to(negatives, len(prompts))), len(prompts))
        if takes.takes_labels:
            if class_label is None:
                raise ConfigError("this is a class-conditional model: give a class label")
            labels = cycle_to([class_label] if isinstance(class_label, int) else list(class_label), n)
            for label in labels:
                if not 0 <= int(label) < takes.num_classes:
                    raise ConfigError(f"class {label} is out of range: this model knows classes "
                                      f"0..{takes.num_classes - 1}")
            cond = self.conditioner.encode_labels(torch.tensor(labels, device=device))
            return Conditions(cond, self.conditioner.null(len(labels), device), len(labels))
        count = n or 1
        return Conditions(self.conditioner.null(count, device), self.conditioner.null(count, device), count)

    # ----- on disk ------------------------------------------------------------------------------------
    def save(self, directory: str | Path, *, experiment: dict[str, Any] | None = None) -> Path:
        """Write the model directory (see :mod:`ldmkit.model.directory`); returns its path."""
        from ldmkit.model.directory import save_model

        return save_model(self, directory, experiment=experiment)

    @classmethod
    def load(cls, directory: str | Path, device: torch.device | str | None = None) -> LatentDiffusionModel:
        """Read a model directory written by :meth:`save` (or `ldm train diffusion`, or `ldm convert`)."""
        from ldmkit.model.directory import load_model

        return load_model(directory, device=device)


def cycle_to(items: list, n: int | None) -> list:
    """``items`` repeated in turn to ``n`` entries (unchanged when ``n`` is None)."""
    if n is None or n == len(items):
        return items
    return [items[i % len(items)] for i in range(n)]


__all__ = ["Conditions", "LatentDiffusionModel", "cycle_to"]
