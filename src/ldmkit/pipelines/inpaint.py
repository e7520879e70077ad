"""Inpainting: with a model trained for it (paper §4.5), or zero-shot with any other model.

``pipe = InpaintPipeline.load(DIR); images = pipe("photo.png", "mask.png", prompt="a blue square")``

Mask convention: white (1) = fill in, black (0) = keep. The route follows the loaded model:

- **trained** (the model's concat kind is ``masked_image``, §4.5): the condition is the encoded masked
  image and the mask on the latent grid, ``[E(x ⊙ (1 − m)), m↓]``, concatenated to the UNet input, the
  same tensor the model was trained with; sampling starts from pure noise and nothing is blended. A text
  model takes an optional prompt (none: the empty caption).
- **zero-shot** (a model without a concat route): an ordinary model is guided by replacing, after every
  sampler step, the known region of the latent with the encoded input noised to the step's noise level
  (the "replacement" method of Song et al. 2021, §5 / App. I.2; Lugmayr et al. 2022 eq. 8):

      x ← m · x + (1 − m) · (sqrt(ᾱ_next) z_known + sqrt(1 − ᾱ_next) ε)

  where m is the mask on the latent grid (a latent cell is unknown if any of its pixels is; max-pool) and ε
  is the noise the sample started from.

Either way the decoded result is composited with the input in pixel space, so pixels outside the mask
equal the input exactly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ldmkit.conditioning import masked_image_concat, merge_conditionings
from ldmkit.conditioning.types import Conditioning
from ldmkit.errors import ConfigError, DataError
from ldmkit.pipelines.checks import request_options
from ldmkit.pipelines.img2img import ImageToImagePipeline, read_image_file
from ldmkit.pipelines.tasks import TaskSpec, plain_model_refusal, register_task, without_image_condition
from ldmkit.samplers import Callback, Step

# A mask pixel strictly between these 8-bit values is "grey"; more than GREY_LIMIT of them is refused.
GREY_LOW, GREY_HIGH, GREY_LIMIT = 16, 239, 0.01


def mask_to_tensor(mask: str | Path | Image.Image | torch.Tensor) -> torch.Tensor:
    """A black-and-white mask → [1, 1, H, W] float32 in {0, 1} (1 = fill in).

    8-bit masks are thresholded at 128 after checking that at most 1% of pixels are grey (strictly
    between 16 and 239); tensors are taken in [0, 1] with the same rule.
    """
    if isinstance(mask, (str, Path)):
        mask = read_image_file(mask, what="mask")
    if isinstance(mask, Image.Image):
        values = torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.float32).copy()) / 255  # [H, W]
    elif isinstance(mask, torch.Tensor):
        values = mask.detach().float().cpu()
        while values.dim() > 2 and values.shape[0] == 1:
            values = values[0]
        if values.dim() != 2:
            raise DataError(f"a mask tensor must be [H, W], [1, H, W] or [1, 1, H, W]; got {list(mask.shape)}")
    else:
        raise ConfigError(f"a mask must be a path, a PIL image or a tensor; got {type(mask).__name__}")
    grey = ((values > GREY_LOW / 255) & (values < GREY_HIGH / 255)).float().mean().item()
    if grey > GREY_LIMIT:
        raise DataError(f"the mask is not black and white: {grey:.0%} of its pixels are grey; "
                        "use white (255) for the region to fill in and black (0) for the region to keep")
    return (values >= 0.5).float()[None, None]  # [1, 1, H, W]


def latent_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """[1, 1, H, W] pixel mask → [1, 1, H/f, W/f]: a latent cell is unknown if any of its pixels is."""
    return F.max_pool2d(mask, kernel_size=factor, stride=factor) if factor > 1 else mask


class InpaintPipeline(ImageToImagePipeline):
    """Fill the white region of a mask: with the model's own inpainting condition, or zero-shot."""

    @property
    def trained_for_inpainting(self) -> bool:
        """Whether the model takes the masked image and mask as its concat condition (paper §4.5)."""
        return self.conditioning.concat.inpainting

    def inpainting_condition(self, pixels: torch.Tensor, pixel_mask: torch.Tensor) -> Conditioning:
        """The concat condition ``[E(x ⊙ (1 − m)), m↓]`` [1, c + 1, h, w] of an image [1, C, H, W] and its
        mask [1, 1, H, W] (1 = fill in), as the model saw it in training."""
        return masked_image_concat(pixels.to(self.device), pixel_mask.to(self.device), self.autoencoder.encode)

    def prepare_mask(self, mask: str | Path | Image.Image | torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """The mask [1, 1, H, W] in {0, 1}; its size must equal the image's."""
        tensor = mask_to_tensor(mask)
        if tensor.shape[-2:] != pixels.shape[-2:]:
            (mh, mw), (ih, iw) = tensor.shape[-2:], pixels.shape[-2:]
            raise DataError(f"the mask is {mw}x{mh} pixels but the image is {iw}x{ih}; "
                            "give a mask of the image's size")
        return tensor

    @torch.no_grad()
    def __call__(self, image: str | Path | Image.Image | torch.Tensor,  # type: ignore[override]
                 mask: str | Path | Image.Image | torch.Tensor, prompt: str | Sequence[str] | None = None, *,
                 class_label: int | Sequence[int] | None = None,
                 negative_prompt: str | Sequence[str] | None = None, strength: float = 1.0, n: int | None = None,
                 steps: int | None = None, sampler: str | None = None, guidance: float = 3.0, guidance_rescale: float = 0.0,
                 guidance_interval: tuple[float, float] | None = None, pag_scale: float = 0.0,
                 pag_layers: Sequence[str] = (), guidance_parallel: float = 1.0,
                 guidance_norm_threshold: float = 0.0, guidance_momentum: float = 0.0,
                 eta: float = 0.0, spacing: str | None = None, seed: int = 0, batch_size: int = 16,
                 callback: Callable | None = None, output: str = "pil",
                 progress: bool = True):
        """Images of the input's size: the input outside the mask, the model's completion inside it.

        ``strength`` < 1 starts from the noised input instead of pure noise (SDEdit inside the mask);
        ``callback`` runs after each step (in the zero-shot route, after that step's blend).
        """
        count = self._image_count(prompt, class_label, n)
        options = request_options(defaults=self.model.sampling_defaults, count=count, batch_size=batch_size, seed=seed,
                                  sampler=sampler, steps=steps,
                                  spacing=spacing, guidance=guidance, guidance_rescale=guidance_rescale,
                                  guidance_interval=guidance_interval, pag_scale=pag_scale,
                                  pag_layers=pag_layers, guidance_parallel=guidance_parallel,
                                  guidance_norm_threshold=guidance_norm_threshold,
                                  guidance_momentum=guidance_momentum, eta=eta,
                                  strength=strength)
        trained = self.trained_for_inpainting
        if not trained:
            self.check_plain_model("zero-shot inpainting")
        pixels = self.prepare_image(image)  # [1, C, H, W]
        self.check_memory(pixels.shape[-2], pixels.shape[-1], batch=batch_size, count=count)
        pixel_mask = self.prepare_mask(mask, pixels)  # [1, 1, H, W]
        if trained and prompt is None and self.conditioning.takes_text:
            prompt = ""  # the prompt is optional: the empty caption is the model's unconditional input
        cond, uncond, count = self.model.condition(prompt, class_label, negative_prompt, n)
        known = self.encode_image(pixels)  # [1, c, h, w]
        if trained:  # §4.5: the model sees the masked image and the mask; no blending
            concat = self.inpainting_condition(pixels, pixel_mask).repeat(count)  # concat [N, c + 1, h, w]
            cond, uncond = merge_conditionings(cond, concat), merge_conditionings(uncond, concat)
            callback_for = (lambda index, noise: callback) if callback is not None else None
        else:
            callback_for = self._replacement(known, pixel_mask, callback)
        generated = self.generate(cond, uncond, count, tuple(known.shape[1:]), options, batch_size=batch_size,
                                  start=known if options.strength < 1.0 else None, callback_for=callback_for,
                                  progress=progress)  # [N, C, H, W]
        images = torch.where(pixel_mask.bool(), generated, pixels)  # pixel-space composite: kept pixels exact
        return self._output(images, output)

    def _replacement(self, known: torch.Tensor, pixel_mask: torch.Tensor, callback: Callback | None
                     ) -> Callable[[slice, torch.Tensor], Callback]:
        """Per-batch step callbacks of the zero-shot route: the known latent cells are replaced by
        ``known`` [1, c, h, w] noised to the level the step has just reached."""
        unknown = latent_mask(pixel_mask, self.autoencoder.downsample_factor).to(self.device)  # [1, 1, h, w]

        def callback_for(index: slice, noise: torch.Tensor) -> Callback:
            def blend(step: Step) -> torch.Tensor:
                alpha_bar = step.alpha_bar  # the level x is now at (ᾱ = 1 after the last step)
                noised = math.sqrt(alpha_bar) * known + math.sqrt(1 - alpha_bar) * noise  # q(x_t | z_known)
                x = (unknown * step.x + (1 - unknown) * noised).to(step.x.dtype)  # [B, c, h, w]
                if callback is not None:
                    replaced = callback(dataclasses.replace(step, x=x))
                    x = x if replaced is None else replaced
                return x
            return blend

        return callback_for

register_task(TaskSpec(
    "inpaint", "Inpaint", 3, InpaintPipeline, lambda c: without_image_condition(c) or c.concat.inpainting,
    plain_model_refusal("zero-shot inpainting")))

__all__ = ["InpaintPipeline", "latent_mask", "mask_to_tensor"]
