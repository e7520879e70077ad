"""Train a latent diffusion preset, sample a grid, and score samples with FD-EffLite0 next to the real floor.

One call does it all and writes to ``--out``: ``results.json`` (metrics, real-vs-real floor, train time,
sampling speed) and ``grid.png`` (for class models one row per class). Used for docs/results/ldm.md:

    python scripts/experiment_ldm.py --out $OUT --config fashion-mnist-class \
        --autoencoder .carry/ae --n 5000 autoencoder=.carry/ae train.max_minutes=4
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ldmkit.config import load_config
from ldmkit.data import build_dataset
from ldmkit.evaluation.evaluate import compute_reference_stats, evaluate_images
from ldmkit.evaluation.generation import evaluate_generation
from ldmkit.io.images import make_grid, save_grid, to_unit
from ldmkit.pipelines import load_pipeline
from ldmkit.training.diffusion_task import DiffusionExperiment, run_diffusion_training


def _real_images(dataset, n: int, seed: int):
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    for lo in range(0, len(order), 500):
        yield torch.stack([dataset[i]["image"] for i in order[lo:lo + 500]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--n", type=int, default=5000, help="samples scored (and real images in the floor)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--sampler", default="dpm++2m")
    parser.add_argument("--reference-split", default="test")
    parser.add_argument("--reference-n", type=int, default=0, help="real reference images (0: the whole split)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = args.out / "run"
    overrides = [*args.overrides, f"train.out={run_dir}"]
    experiment = load_config(DiffusionExperiment, args.config, overrides, group="diffusion")

    started = time.perf_counter()
    run_diffusion_training(args.config, overrides)
    train_seconds = time.perf_counter() - started
    steps = max(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*"))

    pipe = load_pipeline(run_dir / "model")
    kind = experiment.conditioner.kind
    if kind == "class":
        classes = list(range(experiment.conditioner.num_classes))
        rows = [pipe(class_label=classes, seed=100 * s, steps=args.steps, guidance=args.guidance,
                     sampler=args.sampler, output="tensor", progress=False) for s in range(8)]
        grid = torch.stack(rows, dim=1).flatten(0, 1)  # one row per class
        save_grid(make_grid(to_unit(grid), nrow=8), args.out / "grid.png")

    real_test = build_dataset(experiment.data, split=args.reference_split)
    reference_n = args.reference_n or len(real_test)
    reference = compute_reference_stats(_real_images(real_test, reference_n, 0), "efflite0",
                                        source=f"{args.config} {args.reference_split}", progress=True)
    real_train = build_dataset(experiment.data, split="train")
    floor = evaluate_images(_real_images(real_train, args.n, 1), reference, progress=True)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    sample_start = time.perf_counter()
    generated = evaluate_generation(pipe, reference, n=args.n, steps=args.steps, guidance=args.guidance,
                                    sampler=args.sampler, batch_size=500, progress=True)
    sample_seconds = time.perf_counter() - sample_start
    results = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__, "config": args.config, "overrides": args.overrides,
        "training": {"seconds": round(train_seconds, 1), "steps": steps,
                     "batch_size": experiment.train.batch_size,
                     "images_per_second": round(steps * experiment.train.batch_size / train_seconds, 1)},
        "generated": {k: v for k, v in generated.items() if k != "settings"} | {"settings": generated.get("settings")},
        "real_floor": {"description": f"{args.n} random training images vs the whole {args.reference_split} split",
                       **{k: floor[k] for k in ("metrics", "num_images")}},
        "reference": {"split": args.reference_split, "images": reference_n},
        "sampling_seconds_incl_features": round(sample_seconds, 1),
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps({"generated": generated["metrics"], "floor": floor["metrics"],
                      "training": results["training"]}, indent=1, default=str))


if __name__ == "__main__":
    main()
