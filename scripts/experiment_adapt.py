"""Adapting a model to new classes: full fine-tuning and LoRA against training from scratch, at equal GPU minutes.

The Fashion-MNIST class model is pretrained on classes 0–4 (``data.labels``); classes 5–9 are then learned, each
arm for the same wall time on the same data (only classes 5–9):

- ``finetune``: every weight, from the pretrained model (``train.init_from``);
- ``lora``: LoRA on the UNet's attention and convolutions, the class embeddings (the only weights that know the
  new labels) trained in full beside it (``lora.train_conditioner``, as pivotal tuning does);
- ``scratch``: a fresh model of the same architecture.

Each arm keeps a checkpoint every ``K`` steps (``K`` from the pretraining's speed, so that about ``--points``
fall in the budget) and validates there (``train.validate_every``: FD-EffLite0 of ``--val-samples`` samples
against the first ``--val-images`` held-out images). Each arm's final checkpoint is scored offline as soon as it
is trained: FD-EffLite0 of ``--n`` samples of classes 5–9 against all test images of classes 5–9, the
intended-class accuracy of a small classifier this script trains on all ten classes of real training images, and
the same for classes 0–4 (what fine-tuning forgot). The intermediate checkpoints are scored last, while
``--budget-s`` lasts. With ``--check-validation``, ``ldm eval generation`` (the command line, in a subprocess) also
scores the fine-tuned arm's last validated checkpoint with the validation's settings, to show that the number
logged during training is the offline number.

Times are wall seconds since the arm's run was launched, read from the checkpoint's manifest: they include the
run's setup, its validations and its checkpoints, which every arm pays alike. Writes ``results.json``,
``adapt.png`` and sample grids to ``--out`` after every stage, so a call cut short keeps what it measured.

    python scripts/experiment_adapt.py --out $OUT --work /tmp/adapt --n 500 --points 3 --budget-s 560
    python scripts/experiment_adapt.py --out /tmp/a --tiny          # CPU smoke test of the script
    python scripts/experiment_adapt.py --out docs/results/adapt --replot
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from experiment_quality import SmallClassifier, first_stage, train_classifier
from ldmkit.adapters import find_adapters
from ldmkit.config import load_config, to_dict
from ldmkit.data import build_dataset
from ldmkit.evaluation.evaluate import compute_reference_stats, evaluate_images
from ldmkit.io.images import make_grid, save_grid, to_unit
from ldmkit.pipelines import load_pipeline
from ldmkit.training.diffusion_task import DiffusionExperiment

OLD, NEW = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
RUN = ["train.progress=false", "train.image_every=0", "train.log_every=50", "train.steps=1000000"]
ARMS: dict[str, list[str]] = {
    "finetune": ["train.lr=1e-4", "train.warmup_steps=50"],
    "lora": ["train.lr=1e-3", "train.warmup_steps=50", "lora.rank=32", "lora.targets=[attention,convolutions]",
             "lora.train_conditioner=true"],
    "scratch": ["train.lr=2e-4", "train.warmup_steps=100"],
}
FROM_PRETRAINED = {"finetune", "lora"}


def labels_override(classes: tuple[int, ...]) -> str:
    return f"data.labels=[{','.join(map(str, classes))}]"


def checkpoints(run: Path) -> list[tuple[int, Path]]:
    found = [(int(p.name.split("-")[1]), p) for p in (run / "checkpoints").glob("step-*") if (p / "MANIFEST.json")
             .is_file()]
    return sorted(found)


def pipeline_of(weights: Path):
    """The model a checkpoint holds, with the adapter a LoRA run writes beside its base."""
    pipe = load_pipeline(weights)
    for adapter in find_adapters(weights).values():
        pipe.load_lora(adapter)
    return pipe


def sample_and_score(pipe, reference, classifier, classes, n: int, steps: int, guidance: float, device) -> dict:
    """FD-EffLite0 of ``n`` samples of ``classes`` (cycled) and the classifier's per-class intended accuracy, both
    of the same samples (drawn once, DPM-Solver++(2M), seed = index of the batch's first sample)."""
    began = time.perf_counter()
    labels = [classes[i % len(classes)] for i in range(n)]
    images = torch.cat([pipe(class_label=labels[lo:lo + 500], seed=lo, steps=steps, guidance=guidance,
                             sampler="dpm++2m", output="tensor", progress=False) for lo in range(0, n, 500)])
    sampled = time.perf_counter() - began
    result = evaluate_images([images], reference, metrics=("fd",), device=device)
    truth = torch.tensor(labels)
    with torch.no_grad():
        predicted = torch.cat([classifier(images[lo:lo + 1000].to(device)).argmax(1).cpu()
                               for lo in range(0, n, 1000)])
    per_class = {c: float((predicted[truth == c] == c).float().mean()) for c in classes}
    fd = next(v for k, v in result["metrics"].items() if k.startswith("FD"))
    return {"fd": fd, "accuracy": float((predicted == truth).float().mean()), "per_class": per_class,
            "sampling_seconds": round(sampled, 2), "score_seconds": round(time.perf_counter() - began, 2),
            "images": images}


def reference_of(data_cfg, classes, split: str, limit: int = 0):
    dataset = build_dataset(_with_labels(data_cfg, classes), split=split)
    count = min(limit or len(dataset), len(dataset))
    return compute_reference_stats(
        (torch.stack([dataset[i]["image"] for i in range(lo, min(lo + 500, count))]) for lo in range(0, count, 500)),
        "efflite0", source=f"fashion-mnist {split}, classes {list(classes)}", progress=False)


def _with_labels(data_cfg, classes):
    from dataclasses import replace

    return replace(data_cfg, labels=tuple(classes))


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_fd, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for name, arm in results["arms"].items():
        points = arm.get("curve", [])
        if not points:
            continue
        scored = [p for p in points if p.get("fd") is not None]
        line, = ax_fd.plot([p["seconds"] / 60 for p in scored], [p["fd"] for p in scored], marker="o", label=name)
        validated = [(p["seconds"] / 60, p["validation_fd"]) for p in points if p.get("validation_fd") is not None]
        if validated:
            ax_fd.plot(*zip(*validated), ls=":", color=line.get_color(), label=f"{name} (validation FD)")
        ax_acc.plot([p["seconds"] / 60 for p in scored], [p["accuracy"] for p in scored], marker="o", label=name,
                    color=line.get_color())
    ax_fd.set_yscale("log")
    ax_fd.set_xlabel("minutes since the arm's run was launched")
    ax_fd.set_ylabel("FD-EffLite0 of classes 5–9 (lower is better)")
    ax_acc.set_xlabel("minutes since the arm's run was launched")
    ax_acc.set_ylabel("intended-class accuracy, classes 5–9")
    ax_acc.set_ylim(0, 1)
    for ax in (ax_fd, ax_acc):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: dict, out: Path) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    plot(results, out / "adapt.png")


def cli_eval(model: Path, data_cfg, labels: list[int], args, work: Path) -> dict:
    """``ldm eval stats`` of the held-out images and ``ldm eval generation`` of ``model``, with the settings
    validation used (its first ``val_images`` held-out items, their labels cycled, batch 64, seed 0)."""
    data_yaml = work / "heldout-data.yaml"
    data_yaml.write_text(yaml.safe_dump(json.loads(json.dumps(to_dict(data_cfg)))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    stats = work / "heldout.npz"
    commands = [
        [sys.executable, "-m", "ldmkit.cli.main", "eval", "stats", "--data", str(data_yaml), "--split", "val",
         "--limit", str(args.val_images), "--out", str(stats), "--quiet"],
        [sys.executable, "-m", "ldmkit.cli.main", "eval", "generation", "--model", str(model), "--reference",
         str(stats), "--n", str(args.val_samples), "--class", *map(str, labels), "--batch-size",
         str(min(args.val_samples, 64)), "--seed", "0", "--sampler", "dpm++2m", "--steps", str(args.steps),
         "--guidance", str(args.guidance), "--metrics", "fd", "--out", str(work / "offline.json"), "--quiet"],
    ]
    for command in commands:
        subprocess.run(command, check=True, env=env)
    offline = json.loads((work / "offline.json").read_text())
    shown = [" ".join(["ldm", *c[3:]]).replace(" ".join(map(str, labels)), "<the held-out labels>") for c in commands]
    return {"commands": shown, "fd": next(v for k, v in offline["metrics"].items() if k.startswith("FD"))}


def ldm_command(args_list: list[str]) -> list[str]:
    return [sys.executable, "-m", "ldmkit.cli.main", *args_list]


def train_run(name: str, overrides: list[str], timeout: float, out: Path) -> dict:
    """``ldm train diffusion`` in a subprocess, killed past ``timeout`` seconds. Its output goes to OUT/train.log
    under a header line per run: one file for every run (few files come back from the device machine)."""
    command = ldm_command(["train", "diffusion", "--config", "fashion-mnist-class", *overrides])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PYTHONUNBUFFERED": "1"}
    began = time.perf_counter()
    with open(out / "train.log", "a") as log:
        log.write(f"===== {name}: {' '.join(command)}\n")
        log.flush()
        try:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    return {"command": " ".join(["ldm", *command[3:]]), "seconds": round(time.perf_counter() - began, 1),
            "exit": code}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=None, help="where the runs go (default OUT/runs)")
    parser.add_argument("--autoencoder", type=Path, default=None, help="a first stage (else one is trained)")
    parser.add_argument("--ae-minutes", type=float, default=0.6)
    parser.add_argument("--pretrain-minutes", type=float, default=1.25, help="training on classes 0–4")
    parser.add_argument("--minutes", type=float, default=1.0, help="each arm's wall time on classes 5–9")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--points", type=int, default=4, help="checkpoints (and validations) per arm, about")
    parser.add_argument("--n", type=int, default=1000, help="samples per offline score")
    parser.add_argument("--val-samples", type=int, default=500, help="samples of each validation FD")
    parser.add_argument("--val-images", type=int, default=1000, help="held-out images of the validation FD")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--classifier-epochs", type=int, default=4)
    parser.add_argument("--reference", type=int, default=0, help="test images per reference (0: all of them)")
    parser.add_argument("--budget-s", type=float, default=540, help="score an intermediate checkpoint only where "
                                                                    "it ends before this many seconds have passed")
    parser.add_argument("--check-validation", action="store_true",
                        help="score the fine-tuned arm's last validated checkpoint with `ldm eval generation` too")
    parser.add_argument("--tiny", action="store_true", help="tiny models on a few Fashion-MNIST images (smoke test)")
    parser.add_argument("--replot", action="store_true", help="only draw OUT/adapt.png from OUT/results.json")
    args = parser.parse_args()
    if args.replot:
        return plot(json.loads((args.out / "results.json").read_text()), args.out / "adapt.png")
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or args.out / "runs"
    work.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tiny = ["unet.model_channels=8", "unet.channel_mult=[1,2]", "unet.num_res_blocks=1",
            "unet.attention_resolutions=[2]", "unet.num_head_channels=null", "unet.num_heads=2",
            "conditioner.embed_dim=16", "train.batch_size=8", "train.device=cpu", "train.num_workers=0",
            "train.steps=4"] if args.tiny else []
    if args.tiny:
        args.n, args.val_samples, args.val_images, args.steps, args.points, args.reference = 10, 10, 10, 2, 2, 20
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", flush=True)

    if args.tiny and args.autoencoder is None:
        from ldmkit.autoencoders import AutoencoderConfig, build_autoencoder, save_autoencoder

        cfg = AutoencoderConfig(kind="kl", in_channels=1, out_channels=1, base_channels=8, channel_mult=(1, 2),
                                num_res_blocks=1, latent_channels=1, mid_attention=False)
        args.autoencoder = save_autoencoder(work / "ae", build_autoencoder(cfg), cfg)
    autoencoder = args.autoencoder or first_stage(work, args.ae_minutes)
    log("first stage ready")
    base = load_config(DiffusionExperiment, "fashion-mnist-class", [f"autoencoder={autoencoder}"], group="diffusion")
    classifier, classifier_accuracy = (train_classifier(base.data, device, args.classifier_epochs) if not args.tiny
                                       else (SmallClassifier().to(device).eval(), float("nan")))
    log(f"classifier: {classifier_accuracy:.3f} on the real test images")
    results: dict = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                     "torch": torch.__version__, "settings": {k: str(v) for k, v in vars(args).items()},
                     "classifier_test_accuracy": classifier_accuracy, "arms": {}}
    write(results, args.out)

    pretrain = work / "pretrain"
    results["pretrain"] = {"classes": list(OLD), **train_run("pretrain", [
        f"autoencoder={autoencoder}", labels_override(OLD), *RUN, *tiny, f"train.out={pretrain}",
        f"train.max_minutes={args.pretrain_minutes}", "train.checkpoint_every=100000"],
        args.pretrain_minutes * 60 + 90, args.out)}
    steps = checkpoints(pretrain)[-1][0]
    results["pretrain"]["steps"] = steps
    log(f"pretrained on classes 0–4: {steps} steps")
    every = max(2, round(steps / (args.pretrain_minutes * 60) * args.minutes * 60 / args.points))
    results["checkpoint_every"] = every
    new_reference = reference_of(base.data, NEW, "test", args.reference)
    old_reference = reference_of(base.data, OLD, "test", args.reference)
    before = sample_and_score(pipeline_of(pretrain / "model"), old_reference, classifier, OLD, args.n, args.steps,
                              args.guidance, device)
    results["pretrain"]["classes_0_4"] = {k: v for k, v in before.items() if k != "images"}
    write(results, args.out)
    log(f"pretrained model scored: classes 0–4 FD {before['fd']:.2f}, accuracy {before['accuracy']:.3f}")

    for name in args.arms:  # train, then score the last checkpoint (what the arm ends with) and its forgetting
        run = work / name
        overrides = [f"autoencoder={autoencoder}", labels_override(NEW), *RUN, *tiny, *ARMS[name],
                     f"train.out={run}", f"train.max_minutes={args.minutes}", f"train.checkpoint_every={every}",
                     f"train.keep_every={every}", f"train.validate_every={every}",
                     f"validation.fd_samples={args.val_samples}", f"validation.images={args.val_images}",
                     f"validation.steps={args.steps}", f"validation.guidance={args.guidance}"]
        if name in FROM_PRETRAINED:
            overrides.append(f"train.init_from={pretrain / 'model'}")
        launched = time.time()
        arm = train_run(name, overrides, args.minutes * 60 + 90, args.out)
        arm["launched"] = launched
        results["arms"][name] = arm
        log(f"{name}: trained ({arm['exit']}, {arm['seconds']} s)")
        kept = checkpoints(run)
        if not kept:
            write(results, args.out)
            continue
        validation = {}
        if (run / "validation.jsonl").is_file():
            validation = {r["step"]: r["scores"].get("fd") for r in
                          map(json.loads, (run / "validation.jsonl").read_text().splitlines())}
        arm["curve"] = [{"step": step, "seconds": round((path / "MANIFEST.json").stat().st_mtime - launched, 1),
                         "validation_fd": validation.get(step)} for step, path in kept]
        arm["steps"] = kept[-1][0]
        final = pipeline_of(kept[-1][1] / "weights")
        new = sample_and_score(final, new_reference, classifier, NEW, args.n, args.steps, args.guidance, device)
        arm["curve"][-1].update({k: v for k, v in new.items() if k != "images"})
        old = sample_and_score(final, old_reference, classifier, OLD, args.n, args.steps, args.guidance, device)
        arm["classes_0_4_after"] = {k: v for k, v in old.items() if k != "images"}
        save_grid(make_grid(to_unit(_rows(new["images"], old["images"])), nrow=10), args.out / f"grid-{name}.png")
        write(results, args.out)
        log(f"{name}: final FD {new['fd']:.2f}, accuracy {new['accuracy']:.3f}; classes 0–4 now "
            f"{old['accuracy']:.3f}")

    if args.check_validation and "finetune" in results["arms"] and checkpoints(work / "finetune"):
        # the FD logged during training against the command line's, same checkpoint and settings
        run = work / "finetune"
        records = [json.loads(line) for line in (run / "validation.jsonl").read_text().splitlines()]
        kept = dict(checkpoints(run))
        record = next(r for r in reversed(records) if r["step"] in kept)
        held_out = build_dataset(_with_labels(base.data, NEW), split="val")
        labels = [int(held_out[i]["label"]) for i in range(min(args.val_images, len(held_out)))]
        offline = cli_eval(kept[record["step"]] / "weights", _with_labels(base.data, NEW), labels, args, work)
        results["validation_vs_offline"] = {"step": record["step"], "validation_fd": record["scores"]["fd"],
                                            "offline_fd": offline["fd"], "commands": offline["commands"]}
        write(results, args.out)
        log(f"validation FD {record['scores']['fd']:.4f} vs ldm eval generation {offline['fd']:.4f}")

    # The curves' other points, earliest first (where the arms differ most), one arm after another in turn, so
    # that a budget spent early still leaves every arm with points; a point is scored only where the slowest
    # score so far says it fits.
    pending = {name: list(zip(arm.get("curve", [])[:-1], checkpoints(work / name)[:-1]))
               for name, arm in results["arms"].items()}
    cost = max((a["curve"][-1].get("score_seconds", 0.0) for a in results["arms"].values() if a.get("curve")),
               default=0.0)
    while any(pending.values()):
        for name in [n for n, queue in pending.items() if queue]:
            if time.perf_counter() - started + cost > args.budget_s:
                log("budget spent: " + ", ".join(f"{n} {len(q)}" for n, q in pending.items() if q)
                    + " intermediate checkpoints left unscored")
                pending = {}
                break
            point, (step, path) = pending[name].pop(0)
            score = sample_and_score(pipeline_of(path / "weights"), new_reference, classifier, NEW, args.n,
                                     args.steps, args.guidance, device)
            point.update({k: v for k, v in score.items() if k != "images"})
            cost = max(cost, score["score_seconds"])
            write(results, args.out)
            log(f"{name}: step {step} scored, FD {score['fd']:.2f}, accuracy {score['accuracy']:.3f}")
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    write(results, args.out)
    log("done")


def _rows(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Samples of classes 5–9 and of 0–4 (labels cycled in fives) → up to ten rows of ten, classes 0–9 in order."""
    rows = min(len(new) // 5, len(old) // 5, 10)
    new, old = new[:5 * rows].reshape(rows, 5, *new.shape[1:]), old[:5 * rows].reshape(rows, 5, *old.shape[1:])
    return torch.cat([old, new], dim=1).reshape(rows * 10, *new.shape[2:])


if __name__ == "__main__":
    main()
