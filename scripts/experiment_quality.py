"""Time to quality of denoiser backbones and objectives at equal GPU minutes: UNet-ε, UNet-v, UNet-flow, DiT-ε,
DiT-flow, each trained for the same wall time on the same first stage, sampled the same way and scored alike.

Per variant: FD-EffLite0, precision and recall of ``--n`` samples (classes cycled) against the whole test split,
and the accuracy of the intended class under a small classifier this script trains on real training images (its
own test accuracy is reported beside it). One call does what fits; ``results/<variant>.json`` are written as each
finishes, so a second call with the remaining ``--variants`` (and the first stage carried back) completes the
table. Used for docs/results/quality.md:

    python scripts/experiment_quality.py --out $OUT --minutes 2 --variants unet-eps unet-flow dit-eps
    python scripts/experiment_quality.py --out $OUT --minutes 2 --autoencoder .carry/ae --variants unet-v dit-flow
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from torch import nn

from ldmkit.config import load_config
from ldmkit.data import build_dataset
from ldmkit.evaluation.evaluate import compute_reference_stats
from ldmkit.evaluation.generation import evaluate_generation
from ldmkit.io.images import make_grid, save_grid, to_unit
from ldmkit.pipelines import load_pipeline
from ldmkit.training.autoencoder_task import AutoencoderExperiment, AutoencoderTask
from ldmkit.training.diffusion_task import DiffusionExperiment, run_diffusion_training
from ldmkit.training.loop import train

FLOW = ["schedule.kind=flow", "schedule.prediction=flow", "schedule.beta_start=null", "schedule.beta_end=null",
        "timesteps.kind=logit_normal"]
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "unet-eps": ("fashion-mnist-class", []),
    "unet-v": ("fashion-mnist-class", ["schedule.prediction=v"]),
    "unet-flow": ("fashion-mnist-class-flow", []),
    "dit-eps": ("fashion-mnist-class-dit", []),
    "dit-flow": ("fashion-mnist-class-dit", FLOW),
}


class SmallClassifier(nn.Module):
    """Four convolutions and a linear layer: [B, 1, 32, 32] in [-1, 1] → 10 logits."""

    def __init__(self, channels: int = 1, classes: int = 10):
        super().__init__()
        layers, width = [], channels
        for out in (32, 64, 128, 128):
            layers += [nn.Conv2d(width, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(), nn.MaxPool2d(2)]
            width = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width * 2 * 2, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def _stack(dataset, indices):
    items = [dataset[i] for i in indices]
    return torch.stack([it["image"] for it in items]), torch.tensor([int(it["label"]) for it in items])


def train_classifier(data_cfg, device, epochs: int) -> tuple[SmallClassifier, float]:
    """A classifier of real images and its accuracy on the test split."""
    train_set, test_set = build_dataset(data_cfg, split="train"), build_dataset(data_cfg, split="test")
    x, y = _stack(train_set, range(len(train_set)))
    x_test, y_test = _stack(test_set, range(len(test_set)))
    model = SmallClassifier(x.shape[1]).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for lo in range(0, len(x), 512):
            idx = order[lo:lo + 512]
            loss = nn.functional.cross_entropy(model(x[idx].to(device)), y[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval(), accuracy(model, x_test, y_test, device)


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device) -> float:
    correct = 0
    for lo in range(0, len(images), 1000):
        correct += (model(images[lo:lo + 1000].to(device)).argmax(1).cpu() == labels[lo:lo + 1000]).sum().item()
    return correct / len(images)


def first_stage(out: Path, minutes: float) -> Path:
    """The KL-f2 autoencoder, L1 + KL only (LPIPS' weights do not fit the transfer beside the data)."""
    run = out / "runs" / "ae"
    experiment = load_config(AutoencoderExperiment, "fashion-mnist-kl-f2", [
        f"train.out={run}", f"train.max_minutes={minutes}", "train.steps=1000000", "loss.perceptual_weight=0",
        "train.num_workers=8", "train.progress=false", "train.image_every=0", "train.log_every=100",
        "train.checkpoint_every=100000"], group="autoencoder")
    dataset = build_dataset(experiment.data, split="train")
    train(AutoencoderTask(experiment, dataset), experiment.train, dataset, experiment)
    target = out / "ae"
    shutil.copytree(run / "model", target, dirs_exist_ok=True)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--minutes", type=float, default=2.0, help="training wall time of each variant")
    parser.add_argument("--ae-minutes", type=float, default=1.5)
    parser.add_argument("--autoencoder", type=Path, default=None, help="reuse a first stage (else train one)")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--classifier-epochs", type=int, default=4)
    parser.add_argument("--reference-n", type=int, default=0, help="test images in the reference (0: all)")
    parser.add_argument("overrides", nargs="*", help="overrides applied to every variant")
    args = parser.parse_args()
    (args.out / "results").mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    autoencoder = args.autoencoder or first_stage(args.out, args.ae_minutes)
    base = load_config(DiffusionExperiment, "fashion-mnist-class", [f"autoencoder={autoencoder}"], group="diffusion")
    classifier, classifier_accuracy = train_classifier(base.data, device, args.classifier_epochs)
    test_set = build_dataset(base.data, split="test")
    count = args.reference_n or len(test_set)
    reference = compute_reference_stats(
        (torch.stack([test_set[i]["image"] for i in range(lo, min(lo + 500, count))]) for lo in range(0, count, 500)),
        "efflite0", source="fashion-mnist test", progress=False)
    for name in args.variants:
        config, extra = VARIANTS[name]
        run = args.out / "runs" / name
        overrides = [f"autoencoder={autoencoder}", *extra, *args.overrides, f"train.out={run}",
                     f"train.max_minutes={args.minutes}", "train.steps=1000000", "train.progress=false",
                     "train.image_every=0", "train.log_every=100", "train.checkpoint_every=100000"]
        began = time.perf_counter()
        run_diffusion_training(config, overrides)
        train_seconds = time.perf_counter() - began
        steps = max(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*"))
        pipe = load_pipeline(run / "model")
        labels = [i % 10 for i in range(args.n)]
        result = evaluate_generation(pipe, reference, n=args.n, class_labels=labels, steps=args.steps,
                                     guidance=args.guidance, batch_size=500, metrics=("fd", "pr"), progress=False)
        images = torch.cat([pipe(class_label=labels[lo:lo + 500], seed=lo, steps=args.steps, guidance=args.guidance,
                                 output="tensor", progress=False) for lo in range(0, args.n, 500)])
        intended = accuracy(classifier, images, torch.tensor(labels), device)
        save_grid(make_grid(to_unit(images[:80]), nrow=10), args.out / "results" / f"grid-{name}.png")
        record = {"variant": name, "config": config, "overrides": overrides, "device": torch.cuda.get_device_name()
                  if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
                  "training": {"seconds": round(train_seconds, 1), "steps": steps,
                               "parameters": sum(p.numel() for p in pipe.unet.parameters())},
                  "metrics": result["metrics"], "intended_class_accuracy": intended,
                  "classifier_test_accuracy": classifier_accuracy, "n": args.n, "sampler": "dpm++2m",
                  "steps": args.steps, "guidance": args.guidance}
        (args.out / "results" / f"{name}.json").write_text(json.dumps(record, indent=2, default=str))
        print(json.dumps({name: {**result["metrics"], "accuracy": intended, "steps": steps}},
                         default=str), flush=True)
        shutil.rmtree(run / "checkpoints", ignore_errors=True)
    shutil.rmtree(args.out / "runs", ignore_errors=True)  # the models stay behind: only results and ae/ return
    print(f"total {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
