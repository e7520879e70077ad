"""What the task commands (``img2img``, ``inpaint``, ``upscale``, ``synthesize``) share: their common flags,
the checks on them, and one run → write path (a PNG per image, a grid and every setting as JSON)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable

from ldmkit.cli.common import SAMPLING_OPTIONS, add_sampling_arguments, configure_pipeline, fill_sampling_defaults

#: Options every task pipeline call takes, by their ``argparse`` names.
SAMPLING_NAMES = (*SAMPLING_OPTIONS, "seed")


def add_model_argument(parser: argparse.ArgumentParser, what: str = "model") -> None:
    parser.add_argument("--model", required=True, help=f"{what} directory written by `ldm train diffusion`")


def add_condition_arguments(parser: argparse.ArgumentParser, *, negative: bool = True, also: bool = False) -> None:
    """``--prompt``, ``--class`` (and ``--negative-prompt``); ``also``: for models whose main input is an image."""
    qualifier = "for a model that also takes" if also else "for a model conditioned on"
    parser.add_argument("--prompt", default=None, help=f"caption, {qualifier} text")
    parser.add_argument("--class", dest="class_label", type=int, default=None,
                        help=f"class label, {qualifier} class labels")
    if negative:
        parser.add_argument("--negative-prompt", default=None, help="steer away from this caption (text models)")


def add_count_arguments(parser: argparse.ArgumentParser, *, batch: bool = True, what: str = "images") -> None:
    parser.add_argument("--n", type=int, default=1, help=f"number of {what} (seeds --seed, --seed+1, …)")
    if batch:
        parser.add_argument("--batch-size", type=int, default=16, help="images per sampling batch")


def add_output_argument(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--out", default=f"outputs/{command}", help="output directory")


def task_arguments(args: argparse.Namespace, names: tuple[str, ...], size_from: str) -> dict[str, Any]:
    """The keyword arguments ``names`` (plus the sampling options) of a task pipeline call, refusing the options
    that do not apply: both a prompt and a class, or an output size the input (``size_from``) already fixes."""
    from ldmkit.errors import ConfigError

    if getattr(args, "prompt", None) is not None and getattr(args, "class_label", None) is not None:
        raise ConfigError("give --prompt or --class, not both")
    if args.height is not None or args.width is not None:
        raise ConfigError(f"the output size is {size_from}; drop --height/--width")
    return {name: getattr(args, name) for name in (*names, *SAMPLING_NAMES)}


def run_task(args: argparse.Namespace, pipeline_class: type, call: Callable[[Any], Any], *,
             inputs: dict[str, str], kwargs: dict[str, Any],
             settings: Callable[[Any, Any], dict[str, Any]] | None = None) -> int:
    """Load ``pipeline_class`` from ``--model``, run ``call(pipe)`` and write what it returned to ``--out``.

    ``inputs``: the files the call read (recorded with absolute paths); ``settings(pipe, images)``: more to record.
    ``--out`` is checked before the model loads, so a typo costs no loading time.
    """
    from ldmkit.training.run_dir import check_writable

    out = Path(args.out)
    check_writable(out)
    pipe = pipeline_class.load(args.model, device=args.device, precision=args.precision)
    configure_pipeline(pipe, args)
    fill_sampling_defaults(pipe, kwargs)
    started = time.perf_counter()
    images = call(pipe)
    record = dict(model=str(Path(args.model).resolve()), **{k: str(Path(v).resolve()) for k, v in inputs.items()},
                  **(settings(pipe, images) if settings is not None else {}), **kwargs)
    write_outputs(images, out, record, time.perf_counter() - started, str(pipe.device))
    return 0


def write_outputs(images, out: Path, settings: dict[str, Any], seconds: float, device: str) -> None:
    """PNG per image, a grid and a JSON of every setting, as `ldm sample` writes them."""
    from ldmkit.io.images import make_grid, save_grid, to_unit

    for i, image in enumerate(images):
        save_grid(to_unit(image), out / f"{i:04d}.png")
    save_grid(make_grid(to_unit(images)), out / "grid.png")
    record = dict(settings, n=int(images.shape[0]), seconds=round(seconds, 3), device=device)
    (out / "settings.json").write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")  # valid JSON only
    print(f"{images.shape[0]} images in {seconds:.1f}s → {out / 'grid.png'}")


__all__ = ["SAMPLING_NAMES", "add_condition_arguments", "add_count_arguments", "add_model_argument",
           "add_output_argument", "add_sampling_arguments", "run_task", "task_arguments", "write_outputs"]
