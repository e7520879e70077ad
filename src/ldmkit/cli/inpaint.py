"""``ldm inpaint --model DIR --image IMG --mask MASK [--prompt TEXT|--class N] …``: inpainting with a model
trained for it (concat kind masked_image, paper §4.5) or zero-shot with any other model."""

from __future__ import annotations

import argparse

from ldmkit.cli.img2img import add_task_arguments, pipeline_arguments
from ldmkit.cli.task_command import add_output_argument, run_task

HELP = "fill a masked region (a model trained for inpainting, or zero-shot with any model)"
DESCRIPTION = ("Fill the white region of --mask with the model's completion; pixels under black stay exactly as in"
               " --image. A model trained for inpainting (conditioner.concat.kind=masked_image) sees the masked "
               "image and the mask and samples from pure noise; any other model is guided zero-shot by replacing "
               "the known region at every step. --prompt is optional for a text model trained for inpainting and "
               "refused by models without text.")


def run(args: argparse.Namespace) -> int:
    from ldmkit.pipelines import InpaintPipeline

    kwargs = pipeline_arguments(args)
    return run_task(args, InpaintPipeline, lambda pipe: pipe(args.image, args.mask, output="tensor", **kwargs),
                    inputs={"image": args.image, "mask": args.mask}, kwargs=kwargs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_task_arguments(parser, strength=1.0)
    parser.add_argument("--mask", required=True, help="black-and-white image of the input's size; white = fill in")
    add_output_argument(parser, "inpaint")
