"""``ldm img2img --model DIR --image IMG [--prompt TEXT|--class N] --strength 0.6 …``: SDEdit from an image."""

from __future__ import annotations

import argparse

from ldmkit.cli.task_command import (add_condition_arguments, add_count_arguments, add_model_argument,
                                     add_output_argument, add_sampling_arguments, run_task, task_arguments)

#: What an image-to-image call takes besides the sampling options.
IMAGE_TASK_NAMES = ("prompt", "class_label", "negative_prompt", "strength", "n", "batch_size")


def add_task_arguments(parser: argparse.ArgumentParser, strength: float) -> None:
    """Options shared by the image-to-image task commands (img2img, inpaint)."""
    add_model_argument(parser)
    parser.add_argument("--image", required=True, help="input image (its size is the output size)")
    add_condition_arguments(parser)
    parser.add_argument("--strength", type=float, default=strength,
                        help=f"in (0, 1]: how far to move from the input (default {strength}; 1 = from noise)")
    add_count_arguments(parser)
    add_sampling_arguments(parser)


def pipeline_arguments(args: argparse.Namespace) -> dict:
    """The keyword arguments of an image-to-image pipeline call; refuses options that do not apply."""
    return task_arguments(args, IMAGE_TASK_NAMES, size_from="the size of --image")


def _img2img(args: argparse.Namespace) -> int:
    from ldmkit.pipelines import ImageToImagePipeline

    kwargs = pipeline_arguments(args)
    return run_task(args, ImageToImagePipeline, lambda pipe: pipe(args.image, output="tensor", **kwargs),
                    inputs={"image": args.image}, kwargs=kwargs)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("img2img", help="image-to-image: redraw an image with a model (SDEdit)",
                                   description="Encode an image, noise it to --strength and denoise it with "
                                               "the model's condition; the output has the input's size.")
    parser.set_defaults(handler=_img2img)
    add_task_arguments(parser, strength=0.6)
    add_output_argument(parser, "img2img")
