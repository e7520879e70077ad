"""``ldm upscale --model DIR --image IMG [--tile N|auto --overlap N] …``: super-resolution (paper §4.4)."""

from __future__ import annotations

import argparse
from typing import Any

from ldmkit.cli.common import tile_size
from ldmkit.cli.task_command import (add_condition_arguments, add_count_arguments, add_model_argument,
                                     add_output_argument, add_sampling_arguments, run_task, task_arguments)

HELP = "super-resolution: upscale an image with a low_res model"
DESCRIPTION = ("Upscale --image by the model's factor with a model trained with conditioner.concat.kind=low_res; "
               "--tile samples and decodes large outputs in overlapping tiles so memory stays bounded.")


def upscale_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of an :class:`~ldmkit.pipelines.UpscalePipeline` call; refuses options that do not apply."""
    return task_arguments(args, ("prompt", "class_label", "negative_prompt", "n", "tile", "overlap", "tile_batch"),
                          size_from="the model's factor times the size of --image")


def run(args: argparse.Namespace) -> int:
    from ldmkit.pipelines import UpscalePipeline

    kwargs = upscale_arguments(args)
    return run_task(args, UpscalePipeline, lambda pipe: pipe(args.image, output="tensor", **kwargs),
                    inputs={"image": args.image}, kwargs=kwargs,
                    settings=lambda pipe, images: {"factor": pipe.factor, "size": list(images.shape[-2:])})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser, "super-resolution model")
    parser.add_argument("--image", required=True, help="low-resolution input image")
    parser.add_argument("--tile", type=tile_size, default=None,
                        help="tile side in latent cells, or 'auto' for the trained latent size (default: no tiling)")
    parser.add_argument("--overlap", type=int, default=None,
                        help="overlap of neighbouring tiles in latent cells (default: a quarter of the tile)")
    parser.add_argument("--tile-batch", type=int, default=4, help="tiles per network forward")
    add_condition_arguments(parser, also=True)
    add_count_arguments(parser, batch=False, what="upscaled versions")
    add_sampling_arguments(parser)
    add_output_argument(parser, "upscale")
