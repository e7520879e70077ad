"""``ldm distill model=DIR [key=value …]``: a few-step student of a trained model (latent consistency
distillation); rerunning the same command resumes."""

from __future__ import annotations

import argparse

HELP = "distil a model into a 1-4 step student (latent consistency distillation)"
DESCRIPTION = ("Train a student that samples in 1-4 steps with `--sampler lcm` and takes the guidance scale as an "
               "input (one network pass per step). Data: the teacher's own (its recorded experiment), or "
               "latents=DIR / data.*=… given here. The student is written to OUT/model; rerunning the same command"
               " resumes. Options: guidance_min/guidance_max (the w range learned), skip (teacher DDIM step span, "
               "20), target_decay (0.95), train.* (lr 1e-5, steps 2000).")


def run(args: argparse.Namespace) -> int:
    from ldmkit.training.distill_task import run_distillation

    overrides = list(args.overrides)
    if args.model is not None:
        overrides.insert(0, f"model={args.model}")
    if args.out is not None:
        overrides.append(f"train.out={args.out}")
    run_distillation(overrides)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="the teacher's model directory (or model=DIR)")
    parser.add_argument("--out", default=None, help="run directory (or train.out=DIR; default runs/distill)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="e.g. guidance_max=6 train.steps=4000 train.batch_size=64")
