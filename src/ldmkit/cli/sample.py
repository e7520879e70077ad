"""``ldm sample --model DIR [--prompt TEXT…|--class N…] …``: PNGs, a grid and a JSON of every setting."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ldmkit.cli.common import (SAMPLING_OPTIONS, add_sampling_arguments, configure_pipeline, fill_sampling_defaults,
                               sampling_options)

HELP = "sample images from a trained latent diffusion model"
DESCRIPTION = "Sample images from a latent diffusion model directory."

# The modes of LatentDiffusionPipeline.optimize and the kinds of quantize (kept here so `ldm --help` does not
# import torch; a test keeps them equal to the library's).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
QUANTIZATIONS = ("int8", "int8-weight", "fp8")


def run(args: argparse.Namespace) -> int:
    from ldmkit.errors import ConfigError
    from ldmkit.io.images import make_grid, save_grid, to_unit
    from ldmkit.pipelines import load_pipeline
    from ldmkit.training.run_dir import check_writable

    if args.prompt and args.class_label:
        raise ConfigError("give --prompt or --class, not both")
    out = Path(args.out)
    check_writable(out)
    pipe = configure_pipeline(load_pipeline(args.model, device=args.device, precision=args.precision), args)
    loras = load_lora_args(pipe, args.lora)
    if args.compile:
        pipe.optimize(mode=args.compile, quantize=args.quantize)
    elif args.quantize:
        pipe.quantize(args.quantize)
    settings = fill_sampling_defaults(pipe, {**sampling_options(args), "height": args.height, "width": args.width})
    prompts = args.prompt or None
    classes = args.class_label or None
    started = time.perf_counter()
    if args.interpolate:
        if prompts is not None and len(prompts) == 2:
            images = pipe.interpolate(prompts=tuple(prompts), seeds=(args.seed, args.seed), frames=args.n,
                                      output="tensor", progress=True, **_sampler_kwargs(settings))
        else:
            prompt_pair = (prompts[0], prompts[0]) if prompts else None
            images = pipe.interpolate(prompts=prompt_pair, seeds=(args.seed, args.seed + 1),
                                      class_label=classes[0] if classes else None, frames=args.n,
                                      output="tensor", progress=True, **_sampler_kwargs(settings))
        name = "interpolation.png"
        save_grid(make_grid(to_unit(images), nrow=images.shape[0]), out / name)
    else:
        images = pipe(prompts, class_label=classes, negative_prompt=args.negative_prompt, n=args.n, seed=args.seed,
                      batch_size=args.batch_size, output="tensor", **settings)
        for i, image in enumerate(images):
            save_grid(to_unit(image), out / f"{i:04d}.png")
        name = "grid.png"
        save_grid(make_grid(to_unit(images)), out / name)
    seconds = time.perf_counter() - started
    record = dict(model=str(Path(args.model).resolve()), prompt=prompts, class_label=classes,
                  negative_prompt=args.negative_prompt, n=int(images.shape[0]), seed=args.seed, lora=loras,
                  interpolate=args.interpolate, optimizations=list(pipe.optimizations), quantized=pipe.quantized,
                  seconds=round(seconds, 3),
                  images_per_second=round(images.shape[0] / seconds, 3), device=str(pipe.device), **settings)
    (out / "settings.json").write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")  # valid JSON only
    print(f"{images.shape[0]} images in {seconds:.1f}s → {out / name}")
    return 0


def load_lora_args(pipe, specs: list[str] | None) -> list[dict]:
    """Load each ``--lora FILE[:SCALE]`` onto ``pipe``; what was loaded, for settings.json."""
    from ldmkit.adapters import parse_lora

    loaded = []
    for spec in specs or ():
        path, scale = parse_lora(spec)
        pipe.load_lora(path, scale)
        loaded.append({"file": str(path.resolve()), "scale": scale})
    return loaded


def _sampler_kwargs(settings: dict) -> dict:
    return {k: settings[k] for k in (*SAMPLING_OPTIONS, "height", "width")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory written by `ldm train diffusion`")
    parser.add_argument("--prompt", nargs="+", default=None, help="caption(s) for a text-conditional model")
    parser.add_argument("--class", dest="class_label", nargs="+", type=int, default=None,
                        help="class label(s) for a class-conditional model")
    parser.add_argument("--negative-prompt", default=None, help="steer away from this caption (text models)")
    parser.add_argument("--n", type=int, default=16, help="number of images (prompts/classes are cycled)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per sampling batch")
    parser.add_argument("--interpolate", action="store_true",
                        help="write a strip of --n frames: between two prompts (give two), else between seeds "
                             "--seed and --seed+1")
    parser.add_argument("--lora", action="append", default=None, metavar="FILE[:SCALE]",
                        help="LoRA adapter (diffusers' or kohya's .safetensors layout) at SCALE (default 1); repeat "
                             "for several")
    parser.add_argument("--out", default="outputs/samples", help="output directory")
    parser.add_argument("--compile", nargs="?", const="reduce-overhead", default=None, metavar="MODE",
                        choices=COMPILE_MODES,
                        help="GPU fast path: bf16 weights, channels-last, the UNet behind torch.compile with MODE "
                             f"({', '.join(COMPILE_MODES)}; default reduce-overhead = CUDA graphs) and the decoder "
                             "compiled; the first batch compiles for a minute or more; no effect on CPU")
    parser.add_argument("--quantize", default=None, choices=QUANTIZATIONS,
                        help="the denoiser's attention and feed-forward GEMMs in int8 (int8: dynamic activations, "
                             "int8-weight: weights only) or fp8 (Ada/Hopper GPUs); needs the quant extra")
    add_sampling_arguments(parser)
