"""``ldm img2img --model DIR --image IMG [--prompt TEXT|--class N] --strength 0.6 …``: SDEdit from an image."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ldmkit.cli.common import add_sampling_arguments


def add_task_arguments(parser: argparse.ArgumentParser, strength: float) -> None:
    """Options shared by the image-to-image task commands (img2img, inpaint)."""
    parser.add_argument("--model", required=True, help="model directory written by `ldm train diffusion`")
    parser.add_argument("--image", required=True, help="input image (its size is the output size)")
    parser.add_argument("--prompt", default=None, help="caption for a text-conditional model")
    parser.add_argument("--class", dest="class_label", type=int, default=None,
                        help="class label for a class-conditional model")
    parser.add_argument("--negative-prompt", default=None, help="steer away from this caption (text models)")
    parser.add_argument("--strength", type=float, default=strength,
                        help=f"in (0, 1]: how far to move from the input (default {strength}; 1 = from noise)")
    parser.add_argument("--n", type=int, default=1, help="number of images (seeds --seed, --seed+1, …)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per sampling batch")
    add_sampling_arguments(parser)


def pipeline_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of a task pipeline call; refuses options that do not apply."""
    from ldmkit.errors import ConfigError

    if args.prompt is not None and args.class_label is not None:
        raise ConfigError("give --prompt or --class, not both")
    if args.height is not None or args.width is not None:
        raise ConfigError("the output size is the size of --image; drop --height/--width")
    return dict(prompt=args.prompt, class_label=args.class_label, negative_prompt=args.negative_prompt,
                strength=args.strength, n=args.n, sampler=args.sampler, steps=args.steps, guidance=args.guidance,
                guidance_rescale=args.guidance_rescale, eta=args.eta, spacing=args.spacing, seed=args.seed,
                batch_size=args.batch_size)


def write_outputs(images, out: Path, settings: dict[str, Any], seconds: float, device: str) -> None:
    """PNG per image, a grid and a JSON of every setting, as `ldm sample` writes them."""
    from ldmkit.io.images import make_grid, save_grid, to_unit

    for i, image in enumerate(images):
        save_grid(to_unit(image), out / f"{i:04d}.png")
    save_grid(make_grid(to_unit(images)), out / "grid.png")
    record = dict(settings, n=int(images.shape[0]), seconds=round(seconds, 3), device=device)
    (out / "settings.json").write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")  # valid JSON only
    print(f"{images.shape[0]} images in {seconds:.1f}s → {out / 'grid.png'}")


def _img2img(args: argparse.Namespace) -> int:
    from ldmkit.pipelines import ImageToImagePipeline
    from ldmkit.training.run_dir import check_writable

    kwargs = pipeline_arguments(args)
    out = Path(args.out)
    check_writable(out)
    pipe = ImageToImagePipeline.load(args.model, device=args.device, precision=args.precision)
    started = time.perf_counter()
    images = pipe(args.image, output="tensor", **kwargs)
    settings = dict(model=str(Path(args.model).resolve()), image=str(Path(args.image).resolve()), **kwargs)
    write_outputs(images, out, settings, time.perf_counter() - started, str(pipe.device))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("img2img", help="image-to-image: redraw an image with a model (SDEdit)",
                                   description="Encode an image, noise it to --strength and denoise it with "
                                               "the model's condition; the output has the input's size.")
    parser.set_defaults(handler=_img2img)
    add_task_arguments(parser, strength=0.6)
    parser.add_argument("--out", default="outputs/img2img", help="output directory")
