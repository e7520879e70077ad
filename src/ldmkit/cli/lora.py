"""``ldm lora merge --model DIR --lora FILE[:SCALE] … --out DIR2``: a plain model directory with the adapters'
scaled updates added into its weights (no adapter layers; reads like any model)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _merge(args: argparse.Namespace) -> int:
    from ldmkit.adapters import load_lora, merge_loras, parse_lora
    from ldmkit.errors import ConfigError
    from ldmkit.model import LatentDiffusionModel

    out = Path(args.out)
    if out.resolve() == Path(args.model).resolve():
        raise ConfigError("--out is the --model directory; write the merged model to a new directory")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out} exists and is not empty; choose a new directory")
    model = LatentDiffusionModel.load(args.model, device="cpu")
    for spec in args.lora:
        path, scale = parse_lora(spec)
        name = load_lora(model, path, scale)
        print(f"adapter {name} from {path} at scale {scale:g}")
    merge_loras(model)
    experiment = dict(model.extra.get("experiment") or {})
    experiment["merged_loras"] = [str(parse_lora(s)[0].resolve()) + f":{parse_lora(s)[1]:g}" for s in args.lora]
    model.save(out, experiment=experiment)
    print(f"merged model written to {out}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("lora", help="LoRA adapters: merge them into a model",
                                   description="Work with LoRA adapter files (diffusers' or kohya's layout).")
    verbs = parser.add_subparsers(dest="verb", metavar="<verb>", required=True)
    merge = verbs.add_parser("merge", help="write a model directory with adapters merged into its weights",
                             description="Add each adapter's scaled update into the model's weights and write a "
                                         "plain model directory.")
    merge.set_defaults(handler=_merge)
    merge.add_argument("--model", required=True, help="model directory (`ldm train diffusion`, `ldm convert`)")
    merge.add_argument("--lora", required=True, action="append", metavar="FILE[:SCALE]",
                       help="adapter file at SCALE (default 1); repeat for several")
    merge.add_argument("--out", required=True, help="directory of the merged model (new or empty)")
