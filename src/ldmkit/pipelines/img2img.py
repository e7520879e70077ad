"""Image-to-image (SDEdit, Meng et al. 2022; used with LDMs in paper §4.3.2 and App. D): encode → noise → denoise.

``pipe = ImageToImagePipeline.load(DIR); images = pipe("photo.png", prompt="a red circle", strength=0.6)``

The input image is encoded with the first stage, noised to the level where the last ⌊steps · strength⌋
steps of the sampler's ladder begin, and denoised from there with the model's condition; small strengths
stay close to the input, strength 1 starts from (almost) pure noise. Sampling goes through
:meth:`LatentDiffusionPipeline.sample_latents`, the same path as text-to-image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ldmkit.errors import ConfigError, DataError
from ldmkit.io.images import to_pil, to_unit
from ldmkit.pipelines.checks import request_options
from ldmkit.pipelines.tasks import TaskSpec, check_task, plain_model_refusal, register_task, without_image_condition
from ldmkit.pipelines.text2img import LatentDiffusionPipeline

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


class ImageToImagePipeline(LatentDiffusionPipeline):
    """A :class:`LatentDiffusionPipeline` that starts from an encoded input image instead of pure noise."""

    # ----- inputs -----------------------------------------------------------------------------------
    def check_plain_model(self, task: str) -> None:
        """Zero-shot tasks need a model without an image condition (concat route) of its own."""
        if not without_image_condition(self.conditioning):
            raise ConfigError(plain_model_refusal(task)(self.conditioning))

    def prepare_image(self, image: str | Path | Image.Image | torch.Tensor) -> torch.Tensor:
        """An input image → [1, C, H, W] in [-1, 1] on the CPU; H and W must fit the model's grid."""
        pixels = image_to_tensor(image, self.autoencoder.config.in_channels)
        self.model.latent_shape(pixels.shape[-2], pixels.shape[-1])  # ConfigError unless a multiple of f × UNet
        return pixels

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """[1, C, H, W] in [-1, 1] → scaled latent [1, c, H/f, W/f] (the posterior mean)."""
        return self.model.encode(pixels)

    @staticmethod
    def _output(images: torch.Tensor, output: str) -> list[Image.Image] | torch.Tensor:
        return images if output == "tensor" else [to_pil(to_unit(image)) for image in images]

    # ----- img2img ----------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, image: str | Path | Image.Image | torch.Tensor,  # type: ignore[override]
                 prompt: str | Sequence[str] | None = None, *, class_label: int | Sequence[int] | None = None,
                 negative_prompt: str | Sequence[str] | None = None, strength: float = 0.6, n: int | None = None,
                 steps: int | None = None, sampler: str | None = None, guidance: float = 3.0, guidance_rescale: float = 0.0,
                 guidance_interval: tuple[float, float] | None = None, pag_scale: float = 0.0,
                 pag_layers: Sequence[str] = (), guidance_parallel: float = 1.0,
                 guidance_norm_threshold: float = 0.0, guidance_momentum: float = 0.0,
                 eta: float = 0.0, spacing: str | None = None, seed: int = 0, batch_size: int = 16,
                 callback: Callable | None = None, output: str = "pil",
                 progress: bool = True) -> list[Image.Image] | torch.Tensor:
        """Images of the input's size that keep its layout more the smaller ``strength`` is."""
        count = self._image_count(prompt, class_label, n)
        options = request_options(defaults=self.model.sampling_defaults, count=count, batch_size=batch_size, seed=seed,
                                  sampler=sampler, steps=steps,
                                  spacing=spacing, guidance=guidance, guidance_rescale=guidance_rescale,
                                  guidance_interval=guidance_interval, pag_scale=pag_scale,
                                  pag_layers=pag_layers, guidance_parallel=guidance_parallel,
                                  guidance_norm_threshold=guidance_norm_threshold,
                                  guidance_momentum=guidance_momentum, eta=eta,
                                  strength=strength)
        check_task("img2img", self.conditioning)
        pixels = self.prepare_image(image)
        self.check_memory(pixels.shape[-2], pixels.shape[-1], batch=batch_size, count=count)
        cond, uncond, count = self.model.condition(prompt, class_label, negative_prompt, n)
        known = self.encode_image(pixels)  # [1, c, h, w]
        images = self.generate(cond, uncond, count, tuple(known.shape[1:]), options, batch_size=batch_size,
                               start=known if options.strength < 1.0 else None,
                               callback_for=(lambda index, noise: callback) if callback is not None else None,
                               progress=progress)
        return self._output(images, output)


register_task(TaskSpec("img2img", "Image to image", 2, ImageToImagePipeline, without_image_condition,
                       plain_model_refusal("img2img")))

__all__ = ["ImageToImagePipeline", "image_to_tensor", "read_image_file"]
