"""Argument helpers shared by the command groups."""

from __future__ import annotations

import argparse
from typing import Any, Callable


def add_group(subparsers: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    """A command group (``ldm data``) whose verbs are added to the returned sub-parsers."""
    group = subparsers.add_parser(name, help=help, description=help)
    group.set_defaults(group_parser=group, handler=None)
    return group.add_subparsers(dest="verb", metavar="<verb>")


def add_verb(verbs: argparse._SubParsersAction, name: str, help: str,
             handler: Callable[[argparse.Namespace], int | None]) -> argparse.ArgumentParser:
    parser = verbs.add_parser(name, help=help, description=help)
    parser.set_defaults(handler=handler)
    return parser


def check_counts(args: argparse.Namespace, *names: str, minimum: int = 1) -> None:
    """Refuse, in one line naming the flag, a count option (``batch_size`` → ``--batch-size``) below ``minimum``;
    options left unset (None) are skipped."""
    from ldmkit.config.checks import check_count

    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            check_count("--" + name.replace("_", "-"), value, minimum)


def tile_size(text: str) -> int | str:
    """A tile flag's value: 'auto' or a whole number of latent cells."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a whole number of latent cells, got '{text}'") from None


def add_config_arguments(parser: argparse.ArgumentParser, group: str) -> None:
    """``--config PRESET|FILE`` and trailing ``key.sub=value`` overrides."""
    parser.add_argument("--config", default=None,
                        help=f"a preset name from configs/{group}/ or a YAML file")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="override config values, e.g. train.lr=1e-4 data.resolution=64")


# The registered samplers (ldmkit.samplers.names()), written out so `ldm --help` need not import torch;
# tests/unit/test_samplers.py keeps the two equal.
SAMPLER_NAMES = ("ddim", "ddpm", "dpm++2m", "dpm++2m-sde", "dpm++3m", "euler", "euler-a", "flow-heun", "heun", "lcm",
                 "plms", "unipc")


#: The options of :func:`add_sampling_arguments` that every pipeline call takes, by their ``argparse`` names.
SAMPLING_OPTIONS = ("sampler", "steps", "guidance", "guidance_rescale", "guidance_interval", "pag_scale", "pag_layers",
                    "guidance_parallel", "guidance_norm_threshold", "guidance_momentum", "eta", "spacing")


def sampling_options(args: argparse.Namespace) -> dict[str, Any]:
    """The values of :data:`SAMPLING_OPTIONS` on the command line, as pipeline keyword arguments."""
    return {name: getattr(args, name) for name in SAMPLING_OPTIONS}


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """Sampler options shared by `ldm sample`, `ldm eval generation` and the task commands."""
    parser.add_argument("--sampler", default=None, help=f"{', '.join(SAMPLER_NAMES)} (default: the model's own, "
                                                         "lcm for a distilled student, else dpm++2m; docs/sampling.md)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's own, else 25)")
    parser.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (1 = off)")
    parser.add_argument("--guidance-rescale", type=float, default=0.0, help="guidance rescale φ in [0, 1]")
    parser.add_argument("--guidance-interval", type=float, nargs=2, default=None, metavar=("SIGMA_LO", "SIGMA_HI"),
                        help="guide only where SIGMA_LO < σ <= SIGMA_HI (σ = sqrt((1-ᾱ)/ᾱ); a SIGMA_HI above the "
                             "schedule's σ_max: no upper bound), one conditional pass elsewhere (docs/sampling.md)")
    parser.add_argument("--pag-scale", type=float, default=0.0,
                        help="perturbed-attention guidance scale (0 = off, about 3 is common; docs/sampling.md)")
    parser.add_argument("--pag-layers", nargs="+", default=[], metavar="LAYER",
                        help="self-attention layers PAG perturbs, by module path prefix (default: the middle block)")
    parser.add_argument("--guidance-parallel", type=float, default=1.0,
                        help="weight of the guidance along the conditional prediction: 1 = plain CFG, 0 = adaptive "
                             "projected guidance, which keeps high scales from oversaturating (docs/sampling.md)")
    parser.add_argument("--guidance-norm-threshold", type=float, default=0.0,
                        help="cap on the guidance direction's norm per sample (APG's rescaling; 0 = none)")
    parser.add_argument("--guidance-momentum", type=float, default=0.0,
                        help="APG's momentum β in [-1, 1]: the direction runs as Δ + β·(the previous); 0 = off")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM η (0 = deterministic)")
    parser.add_argument("--spacing", default=None, help="timestep spacing (leading, trailing, linspace, karras)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first image; image i uses seed + i")
    parser.add_argument("--height", type=int, default=None, help="image height (default: training size)")
    parser.add_argument("--width", type=int, default=None, help="image width (default: training size)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                        help="autocast dtype (auto: bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--decode-tile", type=tile_size, default=None, metavar="N|auto",
                        help="decode one image and one overlapping tile of N latent cells at a time ('auto': the "
                             "trained latent size), so large images decode in bounded memory (default: whole images)")
    parser.add_argument("--original-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="size-conditioned models: the original image size to imitate (default: the output "
                             "size; smaller values imitate upscaled, blurrier images)")
    parser.add_argument("--crop-top-left", type=int, nargs=2, default=(0, 0), metavar=("TOP", "LEFT"),
                        help="size-conditioned models: the crop corner to imitate (default 0 0: well framed)")


def fill_sampling_defaults(pipe, settings: dict) -> dict:
    """Put the model's own sampler and steps (:attr:`sampling_defaults`) where the command line named none, in
    place, so the call and settings.json both have them."""
    for key, value in pipe.model.sampling_defaults.items():
        if key in settings and settings[key] is None:
            settings[key] = value
    return settings


def configure_pipeline(pipe, args: argparse.Namespace):
    """Apply the pipeline-wide options of :func:`add_sampling_arguments` (decoding tiles, size conditions)."""
    pipe.tile_decoding(args.decode_tile)
    pipe.size_conditions(tuple(args.original_size) if args.original_size else None, tuple(args.crop_top_left))
    return pipe
