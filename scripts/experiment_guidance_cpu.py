"""Guidance methods side by side on a real trained model, on the CPU: classifier-free guidance at several scales,
with a noise-level interval, with adaptive projected guidance, and perturbed-attention guidance alone and with
CFG. Every setting samples the same prompts with the same seeds and is scored alike.

The model is the one ``ldm demo`` trains (synthetic shapes at 32², ``synthetic-text``: a text transformer trained
with the UNet, captions dropped 10% of the time). The prompts are the captions of the held-out scenes (the
preset's 10% split), cycled. The reference is those held-out scenes' EfficientNet-Lite0 statistics. The
scores are FD-EffLite0 and precision/recall (k = 3). ``--repeats`` samples the first setting again with other
seeds, which shows how far FD moves by chance at this sample count. Two floors come first: real training scenes,
and the held-out scenes passed through the autoencoder (what every sample goes through). The results go to
``OUT/results.json`` and ``OUT/guidance.md``, with ``OUT/grid.png``: the first prompts (columns) under each
setting (rows, in the table's order).

    ldm demo --out /tmp/demo                                   # 207 s on 2 cores
    python scripts/experiment_guidance_cpu.py --model /tmp/demo/ldm/model --out docs/results/guidance
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

#: name → sampling settings; the first is the baseline the repeats re-sample.
SETTINGS: dict[str, dict] = {
    "cfg 4": {"guidance": 4.0},
    "no guidance": {"guidance": 1.0},
    "cfg 2": {"guidance": 2.0},
    "cfg 8": {"guidance": 8.0},
    "cfg 8, APG (η 0)": {"guidance": 8.0, "guidance_parallel": 0.0},
    "cfg 8, APG (η 0, β -0.5)": {"guidance": 8.0, "guidance_parallel": 0.0, "guidance_momentum": -0.5},
    "cfg 4, interval (0.28, 5.42]": {"guidance": 4.0, "guidance_interval": (0.28, 5.42)},
    "PAG 2": {"guidance": 1.0, "pag_scale": 2.0},
    "cfg 4 + PAG 2": {"guidance": 4.0, "pag_scale": 2.0},
}
GRID_PROMPTS = 9


def main() -> None:
    from ldmkit.config import load_config
    from ldmkit.data import build_dataset
    from ldmkit.evaluation.evaluate import compute_reference_stats, evaluate_images
    from ldmkit.evaluation.generation import evaluate_generation
    from ldmkit.io.images import make_grid, save_grid, to_unit
    from ldmkit.pipelines import load_pipeline
    from ldmkit.training.diffusion_task import DiffusionExperiment

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="the LDM model directory `ldm demo` wrote")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=1000, help="scored samples per setting")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--sampler", default="dpm++2m")
    p.add_argument("--repeats", type=int, default=2, help="extra seeds of the first setting (chance's spread)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    # the demo trains synthetic-text as it is: its data config is the preset's
    data_config = load_config(DiffusionExperiment, "synthetic-text", [], group="diffusion").data
    held_out = build_dataset(data_config, split="val")
    items = [held_out[i] for i in range(len(held_out))]
    images, prompts = torch.stack([item["image"] for item in items]), [item["caption"] for item in items]
    reference = compute_reference_stats([images], "efflite0", source=f"{len(held_out)} held-out synthetic scenes")
    pipe = load_pipeline(args.model, device="cpu")

    # Floors: real training scenes, and the held-out scenes through the first stage (what any sample must pass)
    train = build_dataset(data_config, split="train")
    real = torch.stack([train[i]["image"] for i in range(args.n)])
    with torch.no_grad():
        passed = torch.cat([pipe.model.decode(pipe.model.encode(images[lo:lo + 250])).clamp(-1, 1)
                            for lo in range(0, len(images), 250)])
    floors = {"real training scenes": evaluate_images([real], reference, metrics=("fd",))["metrics"],
              "held-out scenes through the autoencoder": evaluate_images([passed], reference, metrics=("fd",))["metrics"]}

    common = dict(n=args.n, prompts=prompts, sampler=args.sampler, steps=args.steps, batch_size=250,
                  metrics=("fd", "pr"), progress=False)
    results: dict = {"model": str(args.model), "n": args.n, "steps": args.steps, "sampler": args.sampler,
                     "reference": f"{len(held_out)} held-out scenes", "torch": torch.__version__, "floors": floors,
                     "settings": {}, "repeats": []}
    grids = []
    for name, setting in SETTINGS.items():
        began = time.perf_counter()
        scored = evaluate_generation(pipe, reference, seed=0, **common, **setting)
        results["settings"][name] = {**{k: list(v) if isinstance(v, tuple) else v for k, v in setting.items()},
                                     **scored["metrics"], "seconds": round(time.perf_counter() - began, 1)}
        print(json.dumps({name: results["settings"][name]}), flush=True)
        grids.append(pipe(prompts[:GRID_PROMPTS], seed=0, steps=args.steps, sampler=args.sampler, output="tensor",
                          progress=False, **setting))
    first = next(iter(SETTINGS.values()))
    for repeat in range(1, args.repeats + 1):
        scored = evaluate_generation(pipe, reference, seed=repeat * 100_000, **common, **first)
        results["repeats"].append({"seed": repeat * 100_000, **scored["metrics"]})
    save_grid(make_grid(to_unit(torch.cat(grids)), nrow=GRID_PROMPTS), args.out / "grid.png")
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "guidance.md").write_text(table(results))
    print(table(results))


def table(results: dict) -> str:
    rows = ["| setting | FD-EffLite0 | precision | recall | seconds |", "|---|---|---|---|---|"]
    for name, r in results["floors"].items():
        rows.append(f"| floor: {name} | {r['FD-EffLite0']:.1f} | | | |")
    for name, r in results["settings"].items():
        rows.append(f"| {name} | {r['FD-EffLite0']:.1f} | {r['Precision-EffLite0']:.3f} | "
                    f"{r['Recall-EffLite0']:.3f} | {r['seconds']:.0f} |")
    baseline = next(iter(results["settings"]))
    spread = [r["FD-EffLite0"] for r in results["repeats"]]
    note = (f"\n{baseline} again with other seeds: FD " + ", ".join(f"{v:.1f}" for v in spread) + "\n") if spread else ""
    return "\n".join(rows) + "\n" + note


if __name__ == "__main__":
    main()
