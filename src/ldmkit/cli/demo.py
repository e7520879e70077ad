"""``ldm demo``: the main job, end to end on the embedded synthetic data, on a CPU in minutes.

1. trains a tiny KL-f4 autoencoder (configs/autoencoder/synthetic-kl-f4.yaml),
2. trains a tiny text-conditional LDM in its latent space (configs/diffusion/synthetic-text.yaml),
3. samples one grid for every shape × colour prompt with classifier-free guidance.

Rerunning resumes or skips finished stages (each stage is an ordinary resumable training run).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = "train a tiny autoencoder + text-conditional LDM on synthetic shapes and sample from it (CPU, minutes)"
DESCRIPTION = __doc__.splitlines()[0]

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue")


def demo_prompts() -> list[str]:
    return [f"a {colour} {shape}" for shape in SHAPES for colour in COLOURS]


def run_demo(out: Path, overrides_ae: list[str], overrides_ldm: list[str], seeds: int = 3) -> Path:
    import torch

    from ldmkit.config import load_config
    from ldmkit.data import build_dataset
    from ldmkit.io.images import make_grid, save_grid, to_unit
    from ldmkit.pipelines import load_pipeline
    from ldmkit.training.autoencoder_task import AutoencoderExperiment, AutoencoderTask
    from ldmkit.training.diffusion_task import run_diffusion_training
    from ldmkit.training.loop import train

    started = time.perf_counter()
    ae_run = out / "autoencoder"
    print(f"[1/3] autoencoder → {ae_run}")
    experiment = load_config(AutoencoderExperiment, "synthetic-kl-f4", [f"train.out={ae_run}", *overrides_ae],
                             group="autoencoder")
    dataset = build_dataset(experiment.data, split="train")
    train(AutoencoderTask(experiment, dataset), experiment.train, dataset, experiment)

    ldm_run = out / "ldm"
    print(f"[2/3] latent diffusion model → {ldm_run}")
    run_diffusion_training("synthetic-text", [f"autoencoder={ae_run / 'model'}", f"train.out={ldm_run}",
                                              *overrides_ldm])

    print("[3/3] sampling")
    pipe = load_pipeline(ldm_run / "model", device="cpu")
    prompts = demo_prompts()
    rows = [pipe(prompts, seed=1000 * s, steps=25, guidance=4.0, output="tensor", progress=False)
            for s in range(seeds)]
    grid = make_grid(to_unit(torch.cat(rows)), nrow=len(prompts))
    path = save_grid(grid, out / "samples.png")
    (out / "prompts.txt").write_text("columns, left to right: " + ", ".join(prompts) + "\n")
    print(f"done in {time.perf_counter() - started:.0f}s")
    print(f"samples:     {path}  (columns: {', '.join(prompts)}; rows: seeds)")
    print(f"models:      {ae_run / 'model'}  and  {ldm_run / 'model'}")
    print(f"logs:        tensorboard --logdir {out}")
    print(f"sample more: ldm sample --model {ldm_run / 'model'} --prompt \"a green triangle\" --out {out / 'more'}")
    return path


def run(args: argparse.Namespace) -> int:
    run_demo(Path(args.out), args.ae, args.ldm)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="outputs/demo", help="output directory (rerunning resumes)")
    parser.add_argument("--ae", nargs="*", default=[], metavar="key=value",
                        help="overrides of the autoencoder stage, e.g. train.steps=200")
    parser.add_argument("--ldm", nargs="*", default=[], metavar="key=value",
                        help="overrides of the diffusion stage, e.g. train.steps=1000")
