"""``ldm inpaint --model DIR --image IMG --mask MASK [--prompt TEXT|--class N] …``: inpainting with a model
trained for it (concat kind masked_image, paper §4.5) or zero-shot with any other model."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ldmkit.cli.img2img import add_task_arguments, pipeline_arguments, write_outputs


def _inpaint(args: argparse.Namespace) -> int:
    from ldmkit.pipelines import InpaintPipeline
    from ldmkit.training.run_dir import check_writable

    kwargs = pipeline_arguments(args)
    out = Path(args.out)
    check_writable(out)
    pipe = InpaintPipeline.load(args.model, device=args.device, precision=args.precision)
    started = time.perf_counter()
    images = pipe(args.image, args.mask, output="tensor", **kwargs)
    settings = dict(model=str(Path(args.model).resolve()), image=str(Path(args.image).resolve()),
                    mask=str(Path(args.mask).resolve()), **kwargs)
    write_outputs(images, out, settings, time.perf_counter() - started, str(pipe.device))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inpaint", help="fill a masked region (a model trained for inpainting, or zero-shot with any model)",
        description="Fill the white region of --mask with the model's completion; pixels under black stay exactly "
                    "as in --image. A model trained for inpainting (conditioner.concat.kind=masked_image) sees the "
                    "masked image and the mask and samples from pure noise; any other model is guided zero-shot by "
                    "replacing the known region at every step. --prompt is optional for a text model trained for "
                    "inpainting and refused by models without text.")
    parser.set_defaults(handler=_inpaint)
    add_task_arguments(parser, strength=1.0)
    parser.add_argument("--mask", required=True, help="black-and-white image of the input's size; white = fill in")
    parser.add_argument("--out", default="outputs/inpaint", help="output directory")
