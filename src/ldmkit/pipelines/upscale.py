"""Super-resolution with a model trained on the low-resolution concat condition (paper §4.4): ``ldm upscale``.

``pipe = UpscalePipeline.load(DIR); [big] = pipe("small.png", steps=50, tile="auto")``

The model is an LDM whose conditioner has ``concat.kind: low_res``: the low-resolution image, brought to
the latent grid (resized, or upsampled and encoded), is concatenated to z_t at the UNet input. The
output is ``low_res_factor`` times the input's size (the factor is the model's, from its ConcatConfig).

**Tiled mode** (``tile`` set) keeps memory bounded by the tile size whatever the output size (paper §4.4
upscales beyond the training size convolutionally; tiles make that affordable on one GPU):

- sampling follows MultiDiffusion (Bar-Tal et al. 2023): the full latent is one sampler state, and at
  every step the network runs on overlapping latent tiles — each with its own crop of the low-res
  condition — whose outputs are averaged with weights that ramp linearly across each overlap. The
  x0/ε conversion is affine in the network output at fixed (x_t, t), so this averages the x0 and ε
  predictions; tiles agree at every step and no seams form. The UNet never sees more than a tile
  (``tile_batch`` tiles per forward);
- decoding (and, for ``low_res_mode: encode``, encoding the upsampled condition) runs tile by tile too,
  with the same linear ramps blending the overlapping pixels (latents), so the first stage also sees
  at most a tile.

Where one tile covers the whole latent, tiled and untiled runs are the same computation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from torch import nn

from ldmkit.conditioning.merge import merge_conditionings
from ldmkit.conditioning.types import Conditioning
from ldmkit.data.degradations import resize_image
from ldmkit.denoisers.wrapper import NetworkWrapper
from ldmkit.errors import ConfigError, DataError
from ldmkit.io.images import to_pil, to_unit
from ldmkit.model import LatentDiffusionModel
from ldmkit.nn.tiles import TileGrid
from ldmkit.config.checks import check_count
from ldmkit.pipelines.checks import request_options
from ldmkit.pipelines.img2img import image_to_tensor
from ldmkit.pipelines.tasks import TaskSpec, check_task, register_task
from ldmkit.pipelines.text2img import LatentDiffusionPipeline


def _crop(cond: Conditioning | None, rows: slice, cols: slice) -> Conditioning | None:
    """The conditioning of one tile: the concat route cropped, the other routes unchanged."""
    if cond is None or cond.concat is None:
        return cond
    return replace(cond, concat=cond.concat[..., rows, cols])


class TiledNetwork(NetworkWrapper):
    """A network evaluated on overlapping tiles of its input, outputs blended (MultiDiffusion-style).

    With ``grid_tile`` None (the default) it is the wrapped network unchanged.
    """

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network
        self.grid_tile: tuple[int, int] | None = None
        self.overlap = 0
        self.tile_batch = 1

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        # x: [B, C, H, W] (the whole latent); t: [B]; cond.concat: [B, C_cat, H, W]
        if self.grid_tile is None or (x.shape[-2] <= self.grid_tile[0] and x.shape[-1] <= self.grid_tile[1]):
            return self.network(x, t, cond)
        grid = TileGrid(x.shape[-2], x.shape[-1], self.grid_tile, self.overlap)
        batch = x.shape[0]
        out = torch.zeros(x.shape, device=x.device, dtype=torch.float32)
        total = torch.zeros(1, 1, *x.shape[-2:], device=x.device)
        tiles = grid.tiles()
        for lo in range(0, len(tiles), self.tile_batch):
            chunk = tiles[lo: lo + self.tile_batch]
            regions = [tile.region() for tile in chunk]
            inputs = torch.cat([x[..., rows, cols] for rows, cols in regions])  # [k·B, C, th, tw]
            conds = None if cond is None else Conditioning.cat([_crop(cond, *region) for region in regions])
            pred = self.network(inputs, t.repeat(len(chunk)), conds)  # [k·B, C, th, tw]
            for j, (tile, (rows, cols)) in enumerate(zip(chunk, regions)):
                weight = tile.weight(1, x.device)  # [1, 1, th, tw]
                out[..., rows, cols] += pred[j * batch: (j + 1) * batch].float() * weight
                total[..., rows, cols] += weight
        return (out / total).to(pred.dtype)


# ----- the pipeline -----------------------------------------------------------------------------------
class UpscalePipeline(LatentDiffusionPipeline):
    """Upscale a low-resolution image by the model's factor (a model trained with ``concat.kind: low_res``)."""

    def __init__(self, model: LatentDiffusionModel, precision: str = "auto"):
        super().__init__(model, precision)
        check_task("upscale", self.conditioning)
        concat = self.conditioning.concat
        if concat.low_res_mode == "encode" and self.conditioner.concat_encoder.first_stage is None:
            self.conditioner.set_first_stage(self.autoencoder.encode)
        self.tiled = TiledNetwork(self.unet)
        self.denoiser = model.denoiser(self.tiled)

    @property
    def factor(self) -> int:
        """Output size / input size (the model's ``conditioner.concat.low_res_factor``)."""
        return self.conditioner.config.concat.low_res_factor

    # ----- inputs -----------------------------------------------------------------------------------
    def prepare_image(self, image: str | Path | Image.Image | torch.Tensor) -> torch.Tensor:
        """The low-resolution input → [1, C, h, w] in [-1, 1] on the CPU."""
        return image_to_tensor(image, self.autoencoder.config.in_channels)

    def latent_grid(self, height: int, width: int, tile: tuple[int, int] | None) -> tuple[int, int]:
        """The output's latent grid for an input of ``height × width`` pixels; a DataError if it cannot be sampled.

        Untiled, the output must be a multiple of f × the UNet's downsampling; tiled, only the axes
        shorter than a tile must be (the tiles themselves always are).
        """
        f, r = self.autoencoder.downsample_factor, self.factor
        unet = self.unet.config.downsample_factor
        out_h, out_w = height * r, width * r
        need = [f * unet if tile is None or n <= t * f else f for n, t in zip((out_h, out_w), tile or (0, 0))]
        for side, out, multiple in (("height", out_h, need[0]), ("width", out_w, need[1])):
            if out % multiple:
                step = multiple // math.gcd(multiple, r)
                hint = "" if tile is not None else " or upscale in tiles (--tile)"
                raise DataError(f"image {side} {out // r} is not a multiple of {step}: ×{r} gives {out} pixels and "
                                f"this model needs multiples of {multiple}; crop the image{hint}")
        return out_h // f, out_w // f

    def _tile_size(self, tile: int | Literal["auto"] | None) -> tuple[int, int] | None:
        if tile is None:
            return None
        if tile == "auto":
            return self.latent_size
        unet = self.unet.config.downsample_factor
        if not isinstance(tile, int) or isinstance(tile, bool) or tile < unet or tile % unet:
            raise ConfigError(f"tile must be 'auto' or a positive multiple of {unet} latent cells "
                              f"(the UNet's downsampling); got {tile}")
        return tile, tile

    def _condition(self, low_res: torch.Tensor, grid: tuple[int, int], tiles: TileGrid | None) -> Conditioning:
        """The concat condition [1, C, h, w] of the whole output grid."""
        concat = self.conditioner.config.concat
        low_res = low_res.to(self.device)
        if concat.low_res_mode == "encode" and tiles is not None:
            f = self.autoencoder.downsample_factor
            full = resize_image(low_res, (grid[0] * f, grid[1] * f))  # [1, C, H, W]
            with torch.no_grad():
                latents = tiles.blend(self.autoencoder.encode, full, in_scale=f, out_scale=1,
                                      out_channels=self.autoencoder.latent_channels)
            return Conditioning(concat=latents)
        return self.conditioner.concat_encoder({"low_res": low_res})

    # ----- upscaling --------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, image: str | Path | Image.Image | torch.Tensor,  # type: ignore[override]
                 prompt: str | Sequence[str] | None = None, *, class_label: int | Sequence[int] | None = None,
                 negative_prompt: str | Sequence[str] | None = None, n: int = 1, steps: int | None = None,
                 sampler: str | None = None, guidance: float = 3.0, guidance_rescale: float = 0.0,
                 guidance_interval: tuple[float, float] | None = None, pag_scale: float = 0.0,
                 pag_layers: Sequence[str] = (), guidance_parallel: float = 1.0,
                 guidance_norm_threshold: float = 0.0, guidance_momentum: float = 0.0, eta: float = 0.0,
                 spacing: str | None = None, seed: int = 0, tile: int | Literal["auto"] | None = None,
                 overlap: int | None = None, tile_batch: int = 4, callback: Callable | None = None,
                 output: str = "pil", progress: bool = True) -> list[Image.Image] | torch.Tensor:
        """``n`` upscaled versions (seeds ``seed``, ``seed + 1``, …) of ``image`` at ``factor`` × its size.

        ``tile`` (latent cells, or "auto" = the trained latent size) turns on tiled sampling and decoding;
        ``overlap`` (latent cells, default a quarter of the tile) is how far neighbouring tiles overlap.
        ``guidance`` steers the main (text/class) condition only and is ignored by unconditional models.
        Returns PIL images, or with ``output="tensor"`` a CPU tensor [n, C, H·factor, W·factor] in [-1, 1].
        """
        options = request_options(defaults=self.model.sampling_defaults, count=n, batch_size=1, seed=seed,
                                  sampler=sampler, steps=steps, spacing=spacing,
                                  guidance=guidance, guidance_rescale=guidance_rescale,
                                  guidance_interval=guidance_interval, pag_scale=pag_scale,
                                  pag_layers=pag_layers, guidance_parallel=guidance_parallel,
                                  guidance_norm_threshold=guidance_norm_threshold,
                                  guidance_momentum=guidance_momentum, eta=eta)
        check_count("tile batch", tile_batch)
        tile_size = self._tile_size(tile)
        low_res = self.prepare_image(image)  # [1, C, h, w]
        grid = self.latent_grid(low_res.shape[-2], low_res.shape[-1], tile_size)
        f = self.autoencoder.downsample_factor
        advice = "give a smaller image" + ("" if tile_size is not None else " or upscale in tiles (--tile auto)")
        self.check_memory(grid[0] * f, grid[1] * f, batch=1, count=n, tile=tile_size, tile_batch=tile_batch,
                          advice=advice)
        tiles = None
        if tile_size is not None:
            overlap = min(tile_size) // 4 if overlap is None else overlap
            tiles = TileGrid(grid[0], grid[1], tile_size, overlap)
        concat = self._condition(low_res, grid, tiles)  # concat [1, C, h·r/f, w·r/f]
        main, main_uncond, count = self.model.condition(prompt, class_label, negative_prompt, n)
        concat = concat.repeat(count)
        cond = merge_conditionings(main, concat)
        uncond = merge_conditionings(main_uncond, concat)
        if tiles is not None:  # one image at a time: the tiled network covers one latent grid
            self.tiled.grid_tile, self.tiled.overlap, self.tiled.tile_batch = tiles.tile, tiles.overlap, tile_batch
        try:
            batch = self.generate(cond, uncond, count, (self.autoencoder.latent_channels, *grid), options,
                                  batch_size=1, decode=lambda latents: self._decode(latents, tiles),
                                  callback_for=(lambda index, noise: callback) if callback is not None else None,
                                  progress=progress)  # [n, C, H, W]
        finally:
            self.tiled.grid_tile = None
        return batch if output == "tensor" else [to_pil(to_unit(x)) for x in batch]

    @torch.no_grad()
    def _decode(self, latents: torch.Tensor, tiles: TileGrid | None) -> torch.Tensor:
        """Latents → images in [-1, 1]; with the sampling tiles when sampling was tiled."""
        if tiles is None:
            return self.decode(latents)
        return self.model.decode(latents, tile=tiles.tile, overlap=tiles.overlap)  # [1, C, h·f, w·f]


register_task(TaskSpec(
    "upscale", "Upscale", 4, UpscalePipeline, lambda c: c.concat.super_resolution,
    lambda c: f"this model's image condition is '{c.concat.kind}', not 'low_res': upscaling needs a "
              "super-resolution model (trained with conditioner.concat.kind=low_res)"))

__all__ = ["TileGrid", "TiledNetwork", "UpscalePipeline"]
