"""``ldm export MODEL --to diffusers|sd-safetensors --out PATH``: an ldmkit model in another format."""

from __future__ import annotations

import argparse


def _export(args: argparse.Namespace) -> int:
    from ldmkit.interop.export import export

    path = export(args.model, args.to, args.out)
    print(f"wrote {args.to} {'folder' if args.to == 'diffusers' else 'file'} {path}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="write an ldmkit model as a diffusers folder or a Stable Diffusion single file",
        description="diffusers: a folder StableDiffusionPipeline.from_pretrained (or AutoencoderKL / VQModel for a "
                    "first stage) loads. sd-safetensors: one .safetensors file in the original key layout.")
    parser.set_defaults(handler=_export)
    parser.add_argument("model", help="an ldmkit model directory (kind ldm or autoencoder)")
    parser.add_argument("--to", required=True, choices=("diffusers", "sd-safetensors"), help="the format to write")
    parser.add_argument("--out", required=True, help="the folder or file to write (must not exist)")
