"""``ldm convert SRC --out DIR``: a CompVis / Stable Diffusion checkpoint or a diffusers folder → an ldmkit model."""

from __future__ import annotations

import argparse

HELP = ("turn a .ckpt / .safetensors (CompVis, Stable Diffusion 1.x/2.x) or a diffusers folder into an ldmkit "
        "model directory")
DESCRIPTION = ("Read a checkpoint without running any code it holds and write an ldmkit model directory: kind "
               "'ldm' for a whole latent diffusion model, 'autoencoder' for a first stage alone. Without --config "
               "the architecture is read from the tensors, and what was assumed is printed.")


def run(args: argparse.Namespace) -> int:
    from ldmkit.interop.convert import convert

    parts = convert(args.source, args.out, config=args.config, ema=args.ema, prediction=args.prediction)
    for note in parts.notes:
        print(f"note: {note}")
    print(f"wrote {parts.kind} model directory {args.out}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a .ckpt / .safetensors / .pt file, or a diffusers folder")
    parser.add_argument("--out", required=True, help="the model directory to write (must not exist)")
    parser.add_argument("--config", default=None, help="the original YAML (e.g. v1-inference.yaml)")
    parser.add_argument("--ema", action="store_true", help="take the UNet's EMA weights (model_ema.*)")
    parser.add_argument("--prediction", choices=("eps", "v"), default=None,
                        help="what the UNet predicts, when neither the YAML nor the weights tell (SD 2.x base: eps)")
