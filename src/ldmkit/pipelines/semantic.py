"""Semantic image synthesis (paper §4.3.2): a map of class ids → images laid out like it.

``pipe = SemanticSynthesisPipeline.load(DIR); images = pipe("map.png", n=4, seed=0)``

The model was trained with the one-hot semantic map on the latent grid concatenated to the UNet input
(concat kind ``semantic``); sampling gives it the user's map the same way and starts from pure noise. The
UNet is convolutional, so a map larger than the training images samples a larger latent and gives a
larger image (the paper samples 1024² landscapes from a model trained on 256² crops).

A map is an integer tensor ``[H, W]`` of class ids, or a PNG whose pixel values are the class ids: a
grey-level PNG (0, 1, 2, … — dark but exact) or a palette PNG (the palette index is the class id).
:func:`save_map_png` writes either kind, e.g. from the ``segmentation`` of a synthetic scene.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ldmkit.conditioning import merge_conditionings, semantic_concat
from ldmkit.conditioning.types import Conditioning
from ldmkit.errors import ConfigError, DataError
from ldmkit.io.images import to_pil, to_unit
from ldmkit.pipelines.checks import request_options
from ldmkit.pipelines.tasks import TaskSpec, check_task, register_task
from ldmkit.pipelines.text2img import LatentDiffusionPipeline


def map_to_tensor(segmentation_map: str | Path | Image.Image | torch.Tensor | np.ndarray) -> torch.Tensor:
    """A map of class ids → int64 ``[H, W]``.

    Images: grey-level (``L``, ``I``, ``I;16``, ``1``) values or palette (``P``) indices are the class ids;
    an RGB image is accepted when it is grey (R = G = B). Tensors and arrays must hold integers.
    """
    from ldmkit.pipelines.img2img import read_image_file

    if isinstance(segmentation_map, (str, Path)):
        segmentation_map = read_image_file(segmentation_map, what="map")
    if isinstance(segmentation_map, Image.Image):
        image = segmentation_map
        if image.mode in ("LA", "PA"):
            image = image.getchannel(0)  # drop the alpha channel, keep grey values / palette indices
        if image.mode in ("RGB", "RGBA"):
            rgb = np.asarray(image.convert("RGB"))
            if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                raise DataError("the map is a colour image; give a grey-level PNG whose values are class ids "
                                "or a palette PNG whose indices are class ids")
            array = rgb[..., 0]
        elif image.mode in ("L", "P", "1", "I", "I;16", "I;16B", "I;16L"):
            array = np.asarray(image)
        else:
            raise DataError(f"cannot read class ids from a map of image mode {image.mode}; give a grey-level "
                            "or palette PNG")
        return torch.from_numpy(array.astype(np.int64))  # [H, W]
    if isinstance(segmentation_map, np.ndarray):
        segmentation_map = torch.from_numpy(segmentation_map)
    if not isinstance(segmentation_map, torch.Tensor):
        raise ConfigError(f"a map must be a path, a PIL image, an array or a tensor; got "
                          f"{type(segmentation_map).__name__}")
    tensor = segmentation_map.detach().cpu()
    while tensor.dim() > 2 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() != 2 or tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise DataError(f"a map tensor must be an integer tensor [H, W] of class ids; got {tensor.dtype} "
                        f"{list(segmentation_map.shape)}")
    return tensor.long()


def map_palette(count: int = 256) -> list[int]:
    """A palette of ``count`` distinct colours (class 0 black), flat ``[r, g, b, r, g, b, …]`` for PIL."""
    colours = [(0, 0, 0)]
    for i in range(1, count):
        hue = (i * 0.618033988749895) % 1.0  # golden-ratio steps keep neighbouring ids apart
        colours.append(tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.75, 0.95)))
    return [value for colour in colours for value in colour]


def save_map_png(segmentation_map: torch.Tensor | np.ndarray, path: str | Path, *, palette: bool = True) -> Path:
    """Write a map of class ids (0..255) as a PNG that :func:`map_to_tensor` reads back exactly.

    ``palette`` True writes a palette PNG (index = class id, a distinct colour per class: easy to look at);
    False writes grey levels equal to the class ids.
    """
    ids = map_to_tensor(segmentation_map)  # [H, W]
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) > 255):
        raise DataError(f"a map PNG holds class ids 0..255; this map has {int(ids.min())}..{int(ids.max())}")
    image = Image.fromarray(ids.numpy().astype(np.uint8))  # mode L: grey level = class id
    if palette:
        image.putpalette(map_palette())  # mode P: the same bytes as palette indices
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


class SemanticSynthesisPipeline(LatentDiffusionPipeline):
    """Images that follow a semantic map, from a model whose concat route is ``semantic`` (§4.3.2)."""

    @classmethod
    def from_pipeline(cls, pipe: LatentDiffusionPipeline) -> SemanticSynthesisPipeline:
        """The same model parts (no copies); refuses a model not trained on semantic maps."""
        check_task("synthesize", pipe.conditioning)
        return super().from_pipeline(pipe)

    @property
    def num_classes(self) -> int:
        """Number K of classes of the model's maps (ids 0..K-1)."""
        return self.conditioner.config.concat.semantic_classes

    def prepare_map(self, segmentation_map: str | Path | Image.Image | torch.Tensor | np.ndarray) -> torch.Tensor:
        """The map as int64 [1, H, W] on the CPU; its size must fit the model's grid, its ids its classes."""
        ids = map_to_tensor(segmentation_map)  # [H, W]
        h, w = ids.shape
        f = self.autoencoder.downsample_factor
        multiple = f * self.unet.config.downsample_factor
        if h == 0 or w == 0 or h % multiple or w % multiple:
            raise DataError(f"the map is {w}x{h} pixels; its sides must be multiples of {multiple} "
                            f"(autoencoder f={f} × UNet downsampling {multiple // f})")
        low, high, k = int(ids.min()), int(ids.max()), self.num_classes
        if low < 0 or high >= k:
            bad = low if low < 0 else high
            raise DataError(f"the map holds class id {bad}, but this model knows classes 0..{k - 1}; "
                            "give a map of this model's class ids")
        return ids[None]  # [1, H, W]

    def semantic_condition(self, ids: torch.Tensor) -> Conditioning:
        """The concat condition [1, K, h, w]: the one-hot map on the latent grid, as in training."""
        f = self.autoencoder.downsample_factor
        grid = (ids.shape[-2] // f, ids.shape[-1] // f)
        mode = self.conditioner.config.concat.semantic_resize
        return semantic_concat(ids.to(self.device), self.num_classes, grid, mode)  # concat [1, K, h, w]

    @torch.no_grad()
    def __call__(self, segmentation_map: str | Path | Image.Image | torch.Tensor | np.ndarray,  # type: ignore[override]
                 prompt: str | Sequence[str] | None = None, *, class_label: int | Sequence[int] | None = None,
                 negative_prompt: str | Sequence[str] | None = None, n: int | None = None, steps: int | None = None,
                 sampler: str | None = None, guidance: float = 3.0, guidance_rescale: float = 0.0,
                 guidance_interval: tuple[float, float] | None = None, pag_scale: float = 0.0,
                 pag_layers: Sequence[str] = (), guidance_parallel: float = 1.0,
                 guidance_norm_threshold: float = 0.0, guidance_momentum: float = 0.0, eta: float = 0.0,
                 spacing: str | None = None, seed: int = 0, batch_size: int = 16, callback: Callable | None = None,
                 output: str = "pil", progress: bool = True) -> list[Image.Image] | torch.Tensor:
        """``n`` images of the map's size (image i from seed ``seed + i``). ``prompt`` / ``class_label`` and
        ``guidance`` apply to models that also have a text or class condition."""
        count = self._image_count(prompt, class_label, n)
        options = request_options(defaults=self.model.sampling_defaults, count=count, batch_size=batch_size, seed=seed,
                                  sampler=sampler, steps=steps,
                                  spacing=spacing, guidance=guidance, guidance_rescale=guidance_rescale,
                                  guidance_interval=guidance_interval, pag_scale=pag_scale,
                                  pag_layers=pag_layers, guidance_parallel=guidance_parallel,
                                  guidance_norm_threshold=guidance_norm_threshold,
                                  guidance_momentum=guidance_momentum, eta=eta)
        ids = self.prepare_map(segmentation_map)  # [1, H, W]
        self.check_memory(ids.shape[-2], ids.shape[-1], batch=batch_size, count=count)
        cond, uncond, count = self.model.condition(prompt, class_label, negative_prompt, n)
        concat = self.semantic_condition(ids).repeat(count)  # concat [N, K, h, w]
        cond, uncond = merge_conditionings(cond, concat), merge_conditionings(uncond, concat)
        shape = (self.autoencoder.latent_channels, *concat.concat.shape[-2:])
        batch = self.generate(cond, uncond, count, shape, options, batch_size=batch_size,
                              callback_for=(lambda index, noise: callback) if callback is not None else None,
                              progress=progress)  # [N, C, H, W]
        return batch if output == "tensor" else [to_pil(to_unit(image)) for image in batch]


register_task(TaskSpec(
    "synthesize", "Semantic synthesis", 5, SemanticSynthesisPipeline, lambda c: c.concat.semantic_map,
    lambda c: f"this model's image condition is '{c.concat.kind}', not 'semantic': semantic synthesis needs a "
              "model trained with conditioner.concat.kind=semantic"))

__all__ = ["SemanticSynthesisPipeline", "map_palette", "map_to_tensor", "save_map_png"]
