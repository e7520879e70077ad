"""Train first-stage presets and evaluate them against the bicubic baseline, one after another.

For each preset: ``ldm train autoencoder --config PRESET`` (with the given overrides), then
``ldm eval reconstruction`` on the held-out split. Results (JSON, side-by-side PNGs, a summary table)
go to ``--out``. Used for docs/results/autoencoders.md:

    python scripts/experiment_autoencoders.py --out $OUT --split test \
        --preset fashion-mnist-kl-f2 --preset fashion-mnist-kl-f4 train.steps=4000
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import torch
import yaml

from ldmkit.cli.main import main as ldm


def run(preset: str, split: str, out: Path, overrides: list[str], eval_limit: int) -> dict:
    run_dir = out / "runs" / preset
    started = time.perf_counter()
    code = ldm(["train", "autoencoder", "--config", preset, f"train.out={run_dir}", *overrides])
    train_seconds = time.perf_counter() - started
    if code:
        raise SystemExit(f"training {preset} failed with status {code}")
    config = (run_dir / "config.yaml").read_text()
    eval_dir = out / preset
    experiment = yaml.safe_load(config)
    data_file = run_dir / "data.yaml"  # evaluate on the same data settings the run trained with
    data_file.write_text(yaml.safe_dump(experiment["data"]))
    data_args = ["--data", str(data_file)]
    args = ["eval", "reconstruction", "--autoencoder", str(run_dir / "model"), *data_args, "--split", split,
            "--out", str(eval_dir)]
    if eval_limit:
        args += ["--limit", str(eval_limit)]
    code = ldm(args)
    if code:
        raise SystemExit(f"evaluating {preset} failed with status {code}")
    result = json.loads((eval_dir / "reconstruction.json").read_text())
    # The run may stop before train.steps (train.max_minutes): count the steps it actually took.
    steps = max(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*"))
    batch = experiment["train"]["batch_size"]
    result["training"] = {"seconds": round(train_seconds, 1), "steps": steps, "batch_size": batch,
                          "images_per_second": round(steps * batch / train_seconds, 1),
                          "config": experiment}
    (eval_dir / "reconstruction.json").write_text(json.dumps(result, indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--preset", action="append", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--eval-limit", type=int, default=0)
    parser.add_argument("--keep-runs", action="store_true", help="keep checkpoints and models under --out")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    summary = {"device": device, "torch": torch.__version__, "overrides": args.overrides, "results": {}}
    for preset in args.preset:
        summary["results"][preset] = run(preset, args.split, args.out, args.overrides, args.eval_limit)
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    if not args.keep_runs:
        shutil.rmtree(args.out / "runs", ignore_errors=True)
    print(json.dumps({k: {"metrics": v.get("metrics", v), "training": {kk: vv for kk, vv in v["training"].items()
                                                                      if kk != "config"}}
                      for k, v in summary["results"].items()}, indent=1))


if __name__ == "__main__":
    main()
