"""``ldm export MODEL --to diffusers|sd-safetensors --out PATH``: an ldmkit model in another format."""

from __future__ import annotations

import argparse

HELP = "write an ldmkit model as a diffusers folder or a Stable Diffusion single file"
DESCRIPTION = ("diffusers: a folder StableDiffusionPipeline.from_pretrained (…InpaintPipeline, …UpscalePipeline "
               "for the x4 upscaler, or AutoencoderKL / VQModel for a first stage) loads. sd-safetensors: one "
               ".safetensors file in the original key layout (not the x4 upscaler).")


def run(args: argparse.Namespace) -> int:
    from ldmkit.interop.export import export

    path = export(args.model, args.to, args.out)
    print(f"wrote {args.to} {'folder' if args.to == 'diffusers' else 'file'} {path}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="an ldmkit model directory (kind ldm or autoencoder)")
    parser.add_argument("--to", required=True, choices=("diffusers", "sd-safetensors"), help="the format to write")
    parser.add_argument("--out", required=True, help="the folder or file to write (must not exist)")
