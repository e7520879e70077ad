"""``ldm synthesize --model DIR --map PNG [--n N] …``: semantic image synthesis from a map of class ids."""

from __future__ import annotations

import argparse

from ldmkit.cli.task_command import (add_condition_arguments, add_count_arguments, add_model_argument,
                                     add_output_argument, add_sampling_arguments, run_task, task_arguments)

HELP = "semantic synthesis: images laid out like a map of class ids"
DESCRIPTION = ("Generate images that follow --map with a model trained on semantic maps "
               "(conditioner.concat.kind=semantic); the output has the map's size, which may be larger than the "
               "training images.")


def run(args: argparse.Namespace) -> int:
    from ldmkit.pipelines import SemanticSynthesisPipeline

    kwargs = task_arguments(args, ("prompt", "class_label", "n", "batch_size"), size_from="the size of --map")
    return run_task(args, SemanticSynthesisPipeline, lambda pipe: pipe(args.map, output="tensor", **kwargs),
                    inputs={"map": args.map}, kwargs=kwargs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--map", required=True,
                        help="PNG of class ids: grey levels (0, 1, 2, …) or palette indices; its size is the output "
                             "size and must be a multiple of the model's factor")
    add_condition_arguments(parser, negative=False, also=True)
    add_count_arguments(parser)
    add_sampling_arguments(parser)
    add_output_argument(parser, "synthesize")
