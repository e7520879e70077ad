"""Where a small preset's training time goes: the real trainer against its own step, taken apart.

The Fashion-MNIST class preset (27 M UNet, 16×16×1 latents, batch 256) trained at about 14 steps/s on an H200,
a few per cent of what the card computes (docs/results/ldm.md, docs/results/fit.md). This script says which part
of the loop holds it, for any diffusion preset, on random weights and a synthetic latent cache (no data set and
no trained first stage needed). Each row is timed eager, with ``train.compile`` and with
``train.compile_mode=reduce-overhead`` (CUDA graphs; ``--modes`` picks):

  network   the trainer's own ``DiffusionTask`` (its networks, loss and optimiser, built by ``setup``): loss,
            backward and optimiser step on one batch that stays on the device;
  +ema      the same, then the EMA update the trainer makes after every step;
  +guard    the same, with the gradient clipping and the finiteness check of ``training.loop`` (a host sync);
  trainer   ``ldm train diffusion`` itself for ``--seconds``: loader, logging and everything, steps/s read from
            its TensorBoard throughput after the first quarter of the run.

The gaps between rows are the costs of what each adds; eager against compiled is what compiling buys. The
eager ``+guard`` step is also profiled: the GPU's idle share says how much of it waits for the host. Writes
``trainer_overhead.json`` / ``.md`` to ``--out``::

    python bench/trainer_overhead.py --out bench/results/trainer-overhead            # GPU, about 4 minutes
    python bench/trainer_overhead.py --rows trainer --modes eager cudagraphs --seconds 30 --out $OUT  # GPU, ~3 min
    python bench/trainer_overhead.py --tiny --device cpu --modes eager --out /tmp/bench   # smoke test
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from latent_cache_rss import build_cache
from measure import Runner, environment, fast_cuda_settings, first_call, md_table, median_seconds
from profile_step import profile_steps

NAME = "trainer_overhead"
ROWS = ("network", "+ema", "+guard")  # the step taken apart
ALL_ROWS = (*ROWS, "trainer")
TINY = ["unet.model_channels=16", "unet.channel_mult=[1,2]", "unet.num_res_blocks=1", "unet.attention_resolutions=[2]",
        "unet.num_head_channels=8", "train.batch_size=4", "train.num_workers=0"]


def random_first_stage(preset: str, out: Path, tiny: bool) -> Path:
    """A model directory of ``preset``'s autoencoder with random weights (only its latent shape matters here)."""
    from ldmkit.autoencoders import save_autoencoder
    from ldmkit.autoencoders.build import build_autoencoder
    from ldmkit.autoencoders.config import AutoencoderConfig
    from ldmkit.config import from_dict, read_yaml, resolve_preset

    model = dict(read_yaml(resolve_preset(preset, "autoencoder"))["model"])
    if tiny:
        model.update(base_channels=8, num_res_blocks=1)
    cfg = from_dict(AutoencoderConfig, model)
    return save_autoencoder(out, build_autoencoder(cfg), cfg)


#: The modes each row is timed in: train.compile and train.compile_mode.
MODES = {"eager": ["train.compile=false"], "compiled": ["train.compile=true"],
         "cudagraphs": ["train.compile=true", "train.compile_mode=reduce-overhead"]}


def overrides(args: argparse.Namespace, work: Path, mode: str) -> list[str]:
    return [f"autoencoder={work / 'ae'}", f"latents={work / 'cache'}", f"train.device={args.device}",
            *MODES[mode], "train.progress=false", "train.image_every=0",
            "train.checkpoint_every=1000000", *(TINY if args.tiny else []), *args.overrides]


def task_step(args: argparse.Namespace, work: Path, mode: str, row: str) -> dict[str, Any]:
    """Median time of one step of ``row`` on the trainer's own DiffusionTask, and img/s."""
    from ldmkit.config import load_config
    from ldmkit.data.latents import LatentDataset
    from ldmkit.training.diffusion_task import DiffusionExperiment, DiffusionTask

    compiled = mode != "eager"
    experiment = load_config(DiffusionExperiment, args.preset, overrides(args, work, mode) + [
        f"train.out={work / 'task'}"], group="diffusion")
    device = torch.device(args.device)
    dataset = LatentDataset(experiment.latents)
    task = DiffusionTask(experiment, dataset, dataset.captions)
    task.setup(device, experiment.train)
    batch_size = experiment.train.batch_size
    items = [dataset[i] for i in range(batch_size)]
    batch = {"latent": torch.stack([item["latent"] for item in items]).to(device),
             "label": torch.tensor([int(item["label"]) for item in items], device=device)}
    dtype = torch.bfloat16 if device.type == "cuda" else None
    params = [p for group in task.optimizer.param_groups for p in group["params"] if p.requires_grad]

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            cond = None if "conditioner" in task.trained else task.conditioner.encode(batch)
            loss = task.denoising_loss(batch["latent"], batch, cond)
        task.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if row == "+guard":  # training.loop's StepContext.step: clip, then decide on the host
            norm = torch.nn.utils.clip_grad_norm_(params, experiment.train.grad_clip or math.inf)
            if not bool(torch.isfinite(loss.detach()) & torch.isfinite(norm)):
                raise FloatingPointError("non-finite loss in the benchmark")
        task.optimizer.step()
        if row != "network":
            task.ema.update(task.trained)

    out: dict[str, Any] = {"batch": batch_size}
    out.update(first_call(step, device, compiled=compiled))
    seconds = median_seconds(step, device, warmup=args.warmup, iters=args.iters)
    out.update(steps_s=1 / seconds, img_s=batch_size / seconds, step_ms=seconds * 1e3)
    if row == "+guard" and not compiled and args.profile:
        profile = profile_steps(step, device, steps=2 if args.tiny else 5, warmup=1)
        out["profile"] = {k: profile.get(k) for k in ("wall_ms", "busy_ms", "idle_share", "groups_ms")}
    return out


def trainer(args: argparse.Namespace, work: Path, mode: str) -> dict[str, Any]:
    """``ldm train diffusion`` for about ``--seconds``; the median throughput it logged after the first quarter."""
    from ldmkit.report.run_record import read_scalars

    run = work / f"trainer-{mode}"
    budget = ["train.steps=8"] if args.tiny else [f"train.max_minutes={args.seconds / 60:.4f}", "train.steps=10000000"]
    command = [sys.executable, "-m", "ldmkit.cli.main", "train", "diffusion", "--config", args.preset,
               f"train.out={run}", "train.log_every=10" if not args.tiny else "train.log_every=1",
               *overrides(args, work, mode), *budget]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"ldm train diffusion failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    points = next((p for tag, p in read_scalars(run / "tb").items() if tag.endswith("img_per_s")), [])
    kept = [p.value for p in points[len(points) // 4:]] or [p.value for p in points]
    if not kept:
        raise RuntimeError(f"no img_per_s scalar in {run / 'tb'}")
    img_s = statistics.median(kept)
    batch = yaml.safe_load((run / "config.yaml").read_text())["train"]["batch_size"]
    return {"img_s": img_s, "steps_s": img_s / batch, "batch": batch, "logged_points": len(points),
            "command": " ".join(command[1:])}


def markdown(results: dict[str, Any]) -> str:
    meta, rows = results["meta"], []
    for row in ALL_ROWS:
        timed = [results.get(row, {}).get(mode) or {} for mode in MODES]
        rows.append([row, *(t.get("img_s") for t in timed), *(t.get("compile_s") for t in timed[1:]),
                     next((t["error"] for t in timed if t.get("error")), None)])
    idle = (results.get("+guard", {}).get("eager") or {}).get("profile", {}).get("idle_share")
    return (f"# {meta.get('preset')}: the trainer against its own step — {meta.get('card')}\n\ntorch "
            f"{meta.get('torch')}; command: `{meta.get('command')}`; wall {meta.get('wall_s')} s. GPU idle share of "
            f"the eager +guard step: {idle if idle is not None else '—'}.\n\n"
            + md_table(["row", *(f"img/s {mode}" for mode in MODES), "compile s", "compile s (graphs)", "error"],
                       rows))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("bench/results/trainer-overhead"))
    p.add_argument("--preset", default="fashion-mnist-class", help="a diffusion preset (configs/diffusion)")
    p.add_argument("--autoencoder-preset", default="fashion-mnist-kl-f2", help="its first stage's preset")
    p.add_argument("--resolution", type=int, default=32, help="image side the first stage encodes")
    p.add_argument("--count", type=int, default=60000, help="latents in the synthetic cache")
    p.add_argument("--seconds", type=float, default=45.0, help="wall time of each real trainer run")
    p.add_argument("--device", default="cuda")
    p.add_argument("--modes", nargs="+", choices=tuple(MODES), default=list(MODES))
    p.add_argument("--rows", nargs="+", choices=ALL_ROWS, default=list(ALL_ROWS),
                   help="rows to time (all by default; fewer for a short call)")
    p.add_argument("--profile", action="store_true", help="profile the eager +guard step")
    p.add_argument("--tiny", action="store_true", help="tiny networks, a few steps (smoke test on CPU)")
    p.add_argument("--budget-s", type=float, default=540.0)
    p.add_argument("overrides", nargs="*", help="config overrides of every run")
    args = p.parse_args(argv)
    args.warmup, args.iters = (1, 2) if args.tiny else (5, 20)
    args.count = min(args.count, 64) if args.tiny else args.count
    device = torch.device(args.device)
    fast_cuda_settings(device)
    meta = environment(device) | {"preset": args.preset, "command": " ".join(["python", "bench/trainer_overhead.py",
                                                                               *(argv or sys.argv[1:])])}
    run = Runner(args.out, NAME, args.budget_s, meta, markdown)
    with tempfile.TemporaryDirectory(prefix="trainer-overhead-") as tmp:
        work = Path(tmp)
        first = random_first_stage(args.autoencoder_preset, work / "ae", args.tiny)
        from ldmkit.autoencoders import load_autoencoder

        ae = load_autoencoder(first)
        f = 2 ** (len(ae.config.channel_mult) - 1)
        shape = (ae.latent_channels, args.resolution // f, args.resolution // f)
        build_cache(work / "cache", args.count, 8192, shape, classes=10, dtype=torch.float32)  # as `ldm encode`
        meta["latent_shape"] = list(shape)
        for mode in args.modes:
            if mode == "cudagraphs" and device.type != "cuda":
                run.skip(mode, "CUDA graphs need a CUDA device")
                continue
            estimate = 0 if args.tiny else (15 if mode == "eager" else 60)
            for row in (r for r in ROWS if r in args.rows):
                run.item((row, mode), estimate, lambda row=row, mode=mode: task_step(args, work, mode, row))
            if "trainer" in args.rows:
                run.item(("trainer", mode), 0 if args.tiny else args.seconds + estimate + 5,
                         lambda mode=mode: trainer(args, work, mode))
    run.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
