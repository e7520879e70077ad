"""``ldm synthesize --model DIR --map PNG [--n N] …``: semantic image synthesis from a map of class ids."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ldmkit.cli.common import add_sampling_arguments


def _synthesize(args: argparse.Namespace) -> int:
    from ldmkit.cli.img2img import write_outputs
    from ldmkit.errors import ConfigError
    from ldmkit.pipelines import SemanticSynthesisPipeline
    from ldmkit.training.run_dir import check_writable

    if args.height is not None or args.width is not None:
        raise ConfigError("the output size is the size of --map; drop --height/--width")
    if args.prompt is not None and args.class_label is not None:
        raise ConfigError("give --prompt or --class, not both")
    kwargs = {name: getattr(args, name) for name in ("prompt", "class_label", "n", "sampler", "steps", "guidance",
                                                     "guidance_rescale", "eta", "spacing", "seed", "batch_size")}
    out = Path(args.out)
    check_writable(out)
    pipe = SemanticSynthesisPipeline.load(args.model, device=args.device, precision=args.precision)
    started = time.perf_counter()
    images = pipe(args.map, output="tensor", **kwargs)
    settings = dict(model=str(Path(args.model).resolve()), map=str(Path(args.map).resolve()), **kwargs)
    write_outputs(images, out, settings, time.perf_counter() - started, str(pipe.device))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synthesize", help="semantic synthesis: images laid out like a map of class ids",
        description="Generate images that follow --map with a model trained on semantic maps "
                    "(conditioner.concat.kind=semantic); the output has the map's size, which may be larger "
                    "than the training images.")
    parser.set_defaults(handler=_synthesize)
    parser.add_argument("--model", required=True, help="model directory written by `ldm train diffusion`")
    parser.add_argument("--map", required=True,
                        help="PNG of class ids: grey levels (0, 1, 2, …) or palette indices; its size is the output "
                             "size and must be a multiple of the model's factor")
    parser.add_argument("--prompt", default=None, help="caption, for a model that also takes text")
    parser.add_argument("--class", dest="class_label", type=int, default=None,
                        help="class label, for a model that also takes class labels")
    parser.add_argument("--n", type=int, default=1, help="number of images (seeds --seed, --seed+1, …)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per sampling batch")
    add_sampling_arguments(parser)
    parser.add_argument("--out", default="outputs/synthesize", help="output directory")
