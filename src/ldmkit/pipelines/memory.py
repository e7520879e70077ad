"""How much memory a sampling call needs, estimated before anything is allocated.

Every task checks its image size here first (:func:`check_fits`): a size whose estimate is more than the
device holds is refused in one line that gives both numbers, instead of failing or swapping deep inside a
convolution. The estimate counts only the feature maps that dominate, so it is low rather than high: what it
refuses cannot fit. It counts:

- the UNet on the latent grid: its skip connections plus the widest maps of a residual block, for twice the
  batch (classifier-free guidance runs the conditional and unconditional halves together);
- the first stage on the pixel grid: the widest maps of its residual blocks (encoding and decoding are
  alike), for the batch;
- every image's noise and decoded output, which are kept until the call returns.

With tiles (upscaling, or tiled decoding in any task) the networks see one tile at a time, and only the
full-size buffers grow with the output.
"""

from __future__ import annotations

import os

import torch

from ldmkit.autoencoders.config import AutoencoderConfig
from ldmkit.denoisers.unet_config import UNetConfig
from ldmkit.errors import ConfigError

LIVE_MAPS = 3  # feature maps alive at once inside a residual block (its input, a working copy, its output)
FLOAT32 = 4


def _widest(widths: list[int]) -> list[int]:
    """Per level, the wider of its own maps and those that come in from the next coarser level."""
    return [max(w, widths[min(i + 1, len(widths) - 1)]) for i, w in enumerate(widths)]


def _cells(height: int, width: int, level: int) -> int:
    """Positions of a grid of ``height × width`` after ``level`` halvings."""
    return -(-height // 2**level) * -(-width // 2**level)


def unet_bytes(config: UNetConfig, height: int, width: int, batch: int, itemsize: int = FLOAT32) -> int:
    """Peak activations of the UNet on ``batch`` latents of ``height × width`` cells (guidance doubles it)."""
    widths = [config.model_channels * m for m in config.channel_mult]
    levels = range(len(widths))
    skips = _cells(height, width, 0) * widths[0] + sum(
        _cells(height, width, i) * w * config.num_res_blocks
        + (_cells(height, width, i + 1) * w if i + 1 < len(widths) else 0)
        for i, w in zip(levels, widths))
    working = max(LIVE_MAPS * _cells(height, width, i) * (w + widths[i]) for i, w in zip(levels, _widest(widths)))
    return 2 * batch * (skips + working) * itemsize


def first_stage_bytes(config: AutoencoderConfig, height: int, width: int, batch: int,
                      itemsize: int = FLOAT32) -> int:
    """Peak activations of the first stage encoding or decoding ``batch`` images of ``height × width`` pixels."""
    if config.kind == "identity":
        return LIVE_MAPS * batch * height * width * config.out_channels * itemsize
    widths = _widest([config.base_channels * m for m in config.channel_mult])
    return LIVE_MAPS * batch * itemsize * max(_cells(height, width, i) * w for i, w in enumerate(widths))


def sampling_bytes(unet: UNetConfig | None, first_stage: AutoencoderConfig, height: int, width: int, *, batch: int,
                   count: int, tile: tuple[int, int] | None = None, tile_batch: int = 1,
                   decode_tile: tuple[int, int] | None = None, unet_itemsize: int = FLOAT32,
                   first_stage_itemsize: int = FLOAT32) -> int:
    """Estimated peak bytes of sampling ``count`` images of ``height × width`` pixels, ``batch`` at a time.

    ``tile`` (latent cells) means the UNet sees ``tile_batch`` tiles per forward and the first stage one
    tile at a time, while the whole latent and the whole output image are still held (see the module text).
    ``decode_tile`` (latent cells) tiles the first stage's decoding alone (default: ``tile``).
    ``unet`` None (a network other than ldmkit's UNet) leaves the denoiser out of the estimate.
    """
    f = first_stage.downsample_factor
    latent_h, latent_w = -(-height // f), -(-width // f)
    if tile is None:
        denoiser = unet_bytes(unet, latent_h, latent_w, batch, unet_itemsize) if unet is not None else 0
    else:
        th, tw = min(tile[0], latent_h), min(tile[1], latent_w)
        denoiser = unet_bytes(unet, th, tw, tile_batch * batch, unet_itemsize) if unet is not None else 0
    decode_tile = decode_tile or tile
    if decode_tile is None:
        decoder = first_stage_bytes(first_stage, height, width, batch, first_stage_itemsize)
    else:  # one image, one tile at a time
        th, tw = min(decode_tile[0], latent_h), min(decode_tile[1], latent_w)
        decoder = first_stage_bytes(first_stage, th * f, tw * f, 1, first_stage_itemsize)
    networks = max(denoiser, decoder)
    noise = count * first_stage.z_channels * latent_h * latent_w * FLOAT32
    images = 2 * count * first_stage.out_channels * height * width * FLOAT32  # the batches and their concatenation
    return networks + noise + images


def device_memory_bytes(device: torch.device) -> int | None:
    """Total memory of ``device`` (the machine's RAM for the CPU and for unified-memory devices); None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def format_bytes(count: float) -> str:
    """``1.5 GB``-style text (powers of 1024)."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if count < 1024 or unit == "PB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def check_fits(needed: int, device: torch.device, what: str, advice: str) -> None:
    """A one-line ConfigError when ``needed`` bytes are more than ``device`` holds."""
    available = device_memory_bytes(device)
    if available is not None and needed > available:
        raise ConfigError(f"{what} would need about {format_bytes(needed)} of memory, more than the "
                          f"{format_bytes(available)} of {device.type}; {advice}")


__all__ = ["LIVE_MAPS", "check_fits", "device_memory_bytes", "first_stage_bytes", "format_bytes", "sampling_bytes",
           "unet_bytes"]
