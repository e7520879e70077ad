"""``ldm img2img --model DIR --image IMG [--prompt TEXT|--class N] --strength 0.6 …``: SDEdit from an image."""

from __future__ import annotations

import argparse

from ldmkit.cli.task_command import (add_condition_arguments, add_count_arguments, add_model_argument,
                                     add_output_argument, add_sampling_arguments, run_task, task_arguments)

HELP = "image-to-image: redraw an image with a model (SDEdit)"
DESCRIPTION = ("Encode an image, noise it to --strength and denoise it with the model's condition; the output has "
               "the input's size.")

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


def run(args: argparse.Namespace) -> int:
    from ldmkit.errors import ConfigError
    from ldmkit.pipelines import ImageToImagePipeline

    if args.invert:
        return _invert(args)
    if args.source_prompt is not None or args.invert_iterations:
        raise ConfigError("--source-prompt and --invert-iterations apply with --invert only")
    kwargs = pipeline_arguments(args)
    return run_task(args, ImageToImagePipeline, lambda pipe: pipe(args.image, output="tensor", **kwargs),
                    inputs={"image": args.image}, kwargs=kwargs)


def _invert(args: argparse.Namespace) -> int:
    """DDIM inversion of --image under --source-prompt (default --prompt), sampled back under --prompt."""
    from ldmkit.errors import ConfigError
    from ldmkit.pipelines import ImageToImagePipeline
    from ldmkit.pipelines.inversion import invert, regenerate
    from ldmkit.samplers import SamplerOptions

    task_arguments(args, (), size_from="the size of --image")  # refuses --prompt with --class, --height/--width
    if args.sampler not in (None, "ddim"):
        raise ConfigError(f"--invert samples with ddim; drop --sampler {args.sampler}")
    if args.eta != 0:
        raise ConfigError("--invert reverses DDIM with eta 0; drop --eta")
    if args.n != 1:
        raise ConfigError("--invert makes one image (the round trip is deterministic); drop --n")
    source = args.source_prompt if args.source_prompt is not None else args.prompt
    condition = dict(class_label=args.class_label, negative_prompt=args.negative_prompt)
    sampling = dict(steps=args.steps if args.steps is not None else SamplerOptions().steps, guidance=args.guidance,
                    guidance_rescale=args.guidance_rescale, spacing=args.spacing)

    def call(pipe):
        noise = invert(pipe, args.image, source, iterations=args.invert_iterations, progress=True,
                       **condition, **sampling)
        return regenerate(pipe, noise, args.prompt, output="tensor", progress=True, **condition, **sampling)

    record = dict(invert=True, prompt=args.prompt, source_prompt=source, invert_iterations=args.invert_iterations,
                  sampler="ddim", **condition, **sampling)
    return run_task(args, ImageToImagePipeline, call, inputs={"image": args.image}, kwargs=record)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_task_arguments(parser, strength=0.6)
    parser.add_argument("--invert", action="store_true",
                        help="instead of noising: DDIM-invert the image under --source-prompt and sample it back "
                             "with ddim under --prompt (the same prompt reconstructs it, another edits it); "
                             "--strength does not apply")
    parser.add_argument("--source-prompt", default=None, help="with --invert: the caption the image is inverted "
                                                              "under (default --prompt)")
    parser.add_argument("--invert-iterations", type=int, default=0,
                        help="with --invert: fixed-point refinements per step (closer round trip, one more "
                             "evaluation per step each; default 0)")
    add_output_argument(parser, "img2img")
