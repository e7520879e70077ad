"""Image-to-image (SDEdit, Meng et al. 2022; used with LDMs in paper §4.3.2 and App. D): encode → noise → denoise.

``pipe = ImageToImagePipeline.load(DIR); images = pipe("photo.png", prompt="a red circle", strength=0.6)``

The input image is encoded with the first stage, noised to the level where the last ⌊steps · strength⌋
steps of the sampler's ladder begin, and denoised from there with the model's condition; small strengths
stay close to the input, strength 1 starts from (almost) pure noise. Sampling goes through
:meth:`LatentDiffusionPipeline.sample_latents`, the same path as text-to-image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ldmkit.errors import ConfigError, DataError
from ldmkit.io.images import to_pil, to_unit
from ldmkit.pipelines.checks import check_request
from ldmkit.pipelines.text2img import LatentDiffusionPipeline, seeded_noise

MAX_PIXELS = 64 * 1024 * 1024  # refuse "decompression bombs" larger than this


def read_image_file(path: str | Path, what: str = "image") -> Image.Image:
    """The decoded image at ``path``; a missing or unreadable file is a one-line DataError."""
    from ldmkit.data.images import BadImage, load_image

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file {path} does not exist; check the path")
    try:
        return load_image(path, MAX_PIXELS)
    except BadImage as exc:
        raise DataError(f"cannot read {what} file {path}: {exc}; give a PNG or JPEG image") from None


def image_to_tensor(image: str | Path | Image.Image | torch.Tensor, channels: int = 3) -> torch.Tensor:
    """An image → [1, channels, H, W] float32 in [-1, 1] (8-bit images map v ↦ v/127.5 − 1)."""
    if isinstance(image, (str, Path)):
        image = read_image_file(image)
    if isinstance(image, Image.Image):
        mode = "L" if channels == 1 else "RGB"
        array = np.asarray(image.convert(mode), dtype=np.float32)
        array = array[..., None] if array.ndim == 2 else array
        return torch.from_numpy(array.copy()).permute(2, 0, 1)[None] / 127.5 - 1  # [1, C, H, W]
    if not isinstance(image, torch.Tensor):
        raise ConfigError(f"an image must be a path, a PIL image or a tensor; got {type(image).__name__}")
    tensor = image.detach().float().cpu()
    tensor = tensor[None] if tensor.dim() == 3 else tensor
    if tensor.dim() != 4 or tensor.shape[0] != 1 or tensor.shape[1] != channels:
        raise DataError(f"an image tensor must be [{channels}, H, W] or [1, {channels}, H, W] in [-1, 1]; "
                        f"got {list(image.shape)}")
    return tensor


def check_strength(strength: float) -> float:
    """strength must lie in (0, 1] (NaN refused too)."""
    if not (isinstance(strength, (int, float)) and math.isfinite(strength) and 0.0 < strength <= 1.0):
        raise ConfigError(f"strength must be in (0, 1]; got {strength} (small keeps the input, 1 ignores it)")
    return float(strength)


class ImageToImagePipeline(LatentDiffusionPipeline):
    """A :class:`LatentDiffusionPipeline` that starts from an encoded input image instead of pure noise."""

    # ----- inputs -----------------------------------------------------------------------------------
    def check_plain_model(self, task: str) -> None:
        """Zero-shot tasks need a model without an image condition (concat route) of its own."""
        concat = self.conditioner.config.concat.kind
        if concat != "none":
            raise ConfigError(f"this model takes a '{concat}' image condition; {task} works with unconditional, "
                              "class or text models — use the pipeline of the task it was trained for")

    def prepare_image(self, image: str | Path | Image.Image | torch.Tensor) -> torch.Tensor:
        """An input image → [1, C, H, W] in [-1, 1] on the CPU; H and W must fit the model's grid."""
        pixels = image_to_tensor(image, self.autoencoder.config.in_channels)
        self._latent_shape(pixels.shape[-2], pixels.shape[-1])  # ConfigError unless a multiple of f × UNet
        return pixels

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """[1, C, H, W] in [-1, 1] → scaled latent [1, c, H/f, W/f] (the posterior mean)."""
        return self.autoencoder.encode(pixels.to(self.device)).float()

    # ----- the shared loop --------------------------------------------------------------------------
    @torch.no_grad()
    def _generate(self, known: torch.Tensor, cond, uncond, count: int, *, strength: float, seed: int,
                  batch_size: int, callback_for: Callable[[slice, torch.Tensor], Callable | None] | None = None,
                  **sample_kwargs: Any) -> torch.Tensor:
        """Sample ``count`` latents starting from ``known`` [1, c, h, w] and decode them → [count, C, H, W].

        Image i uses the noise of seed ``seed + i``. ``callback_for(batch slice, that batch's noise)`` may
        give a per-step callback (inpainting blends the known region through it).
        """
        noise = seeded_noise([seed + i for i in range(count)], tuple(known.shape[1:]))  # [N, c, h, w]
        images = []
        for lo in range(0, count, batch_size):
            index = slice(lo, min(lo + batch_size, count))
            batch_noise = noise[index].to(self.device)
            start = known.expand(batch_noise.shape[0], -1, -1, -1) if strength < 1.0 else None
            callback = callback_for(index, batch_noise) if callback_for is not None else None
            latents = self.sample_latents(cond.index(index), uncond.index(index), batch_noise, start=start,
                                          strength=strength, callback=callback, seed=seed + lo, **sample_kwargs)
            images.append(self.decode(latents).cpu())
        return torch.cat(images)

    @staticmethod
    def _output(images: torch.Tensor, output: str) -> list[Image.Image] | torch.Tensor:
        return images if output == "tensor" else [to_pil(to_unit(image)) for image in images]

    # ----- img2img ----------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, image: str | Path | Image.Image | torch.Tensor,  # type: ignore[override]
                 prompt: str | Sequence[str] | None = None, *, class_label: int | Sequence[int] | None = None,
                 negative_prompt: str | Sequence[str] | None = None, strength: float = 0.6, n: int | None = None,
                 steps: int = 25, sampler: str = "dpm++2m", guidance: float = 3.0, guidance_rescale: float = 0.0,
                 eta: float = 0.0, spacing: str | None = None, seed: int = 0, batch_size: int = 16,
                 callback: Callable | None = None, output: str = "pil",
                 progress: bool = True) -> list[Image.Image] | torch.Tensor:
        """Images of the input's size that keep its layout more the smaller ``strength`` is."""
        strength = check_strength(strength)
        count = self._image_count(prompt, class_label, n)
        check_request(count=count, batch_size=batch_size, seed=seed, steps=steps, guidance=guidance,
                      guidance_rescale=guidance_rescale, eta=eta)
        self.check_plain_model("img2img")
        pixels = self.prepare_image(image)
        self.check_memory(pixels.shape[-2], pixels.shape[-1], batch=batch_size, count=count)
        cond, uncond, count = self._conditions(prompt, class_label, negative_prompt, n)
        known = self.encode_image(pixels)
        images = self._generate(known, cond, uncond, count, strength=strength, seed=seed, batch_size=batch_size,
                                callback_for=(lambda index, noise: callback) if callback is not None else None,
                                sampler=sampler, steps=steps, guidance=guidance, guidance_rescale=guidance_rescale,
                                eta=eta, spacing=spacing, progress=progress)
        return self._output(images, output)


__all__ = ["ImageToImagePipeline", "check_strength", "image_to_tensor", "read_image_file"]
