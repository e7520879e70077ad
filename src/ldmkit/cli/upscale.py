"""``ldm upscale --model DIR --image IMG [--tile N|auto --overlap N] …``: super-resolution (paper §4.4)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ldmkit.cli.common import add_sampling_arguments
from ldmkit.cli.img2img import write_outputs


def _tile(text: str) -> int | str:
    """``--tile``: 'auto' or a number of latent cells."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a whole number of latent cells, got '{text}'") from None


def upscale_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of an :class:`~ldmkit.pipelines.UpscalePipeline` call; refuses options that do not apply."""
    from ldmkit.errors import ConfigError

    if args.prompt is not None and args.class_label is not None:
        raise ConfigError("give --prompt or --class, not both")
    if args.height is not None or args.width is not None:
        raise ConfigError("the output size is the model's factor times the size of --image; drop --height/--width")
    names = ("prompt", "class_label", "negative_prompt", "n", "sampler", "steps", "guidance", "guidance_rescale", "eta",
             "spacing", "seed", "tile", "overlap", "tile_batch")
    return {name: getattr(args, name) for name in names}


def _upscale(args: argparse.Namespace) -> int:
    from ldmkit.pipelines import UpscalePipeline
    from ldmkit.training.run_dir import check_writable

    kwargs = upscale_arguments(args)
    out = Path(args.out)
    check_writable(out)
    pipe = UpscalePipeline.load(args.model, device=args.device, precision=args.precision)
    started = time.perf_counter()
    images = pipe(args.image, output="tensor", **kwargs)
    settings = dict(model=str(Path(args.model).resolve()), image=str(Path(args.image).resolve()), factor=pipe.factor,
                    size=list(images.shape[-2:]), **kwargs)
    write_outputs(images, out, settings, time.perf_counter() - started, str(pipe.device))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("upscale", help="super-resolution: upscale an image with a low_res model",
                                   description="Upscale --image by the model's factor with a model trained with "
                                               "conditioner.concat.kind=low_res; --tile samples and decodes large "
                                               "outputs in overlapping tiles so memory stays bounded.")
    parser.set_defaults(handler=_upscale)
    parser.add_argument("--model", required=True, help="super-resolution model directory written by `ldm train "
                                                       "diffusion`")
    parser.add_argument("--image", required=True, help="low-resolution input image")
    parser.add_argument("--tile", type=_tile, default=None,
                        help="tile side in latent cells, or 'auto' for the trained latent size (default: no tiling)")
    parser.add_argument("--overlap", type=int, default=None,
                        help="overlap of neighbouring tiles in latent cells (default: a quarter of the tile)")
    parser.add_argument("--tile-batch", type=int, default=4, help="tiles per network forward")
    parser.add_argument("--prompt", default=None, help="caption, for a model that is also text-conditional")
    parser.add_argument("--class", dest="class_label", type=int, default=None,
                        help="class label, for a model that is also class-conditional")
    parser.add_argument("--negative-prompt", default=None, help="steer away from this caption (text models)")
    parser.add_argument("--n", type=int, default=1, help="number of upscaled versions (seeds --seed, --seed+1, …)")
    add_sampling_arguments(parser)
    parser.add_argument("--out", default="outputs/upscale", help="output directory")
