"""``ldm ema RUN --sigma-rel 0.08 [--step N] --out DIR``: the model of any EMA length, after training (post-hoc EMA,
Karras et al. 2024 §3), from the snapshots a run kept with ``posthoc_ema.snapshot_every``."""

from __future__ import annotations

import argparse

HELP = "post-hoc EMA: the model of any EMA length from a run's EMA snapshots"
DESCRIPTION = ("Reconstruct the denoiser averaged with a power-function EMA of relative width --sigma-rel (EDM2: "
               "0.05-0.15 is the useful range) ending at a snapshot step, from the two EMAs the run kept "
               "(posthoc_ema.snapshot_every > 0), and write it as a model directory. Choose the width by scoring a"
               " few with `ldm eval generation`.")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ldmkit.config import is_finite_number
    from ldmkit.errors import ConfigError
    from ldmkit.io import load_state_strict
    from ldmkit.model import LatentDiffusionModel
    from ldmkit.training.posthoc_ema import reconstruct

    if not is_finite_number(args.sigma_rel):
        raise ConfigError(f"--sigma-rel must be a finite number, got {args.sigma_rel}")
    run_dir = Path(args.run)
    state, record = reconstruct(run_dir, args.sigma_rel, args.step)
    model = LatentDiffusionModel.load(run_dir / "model")  # the run's configs, conditioner and first stage
    load_state_strict(model.unet, state, f"the EMA snapshots of {run_dir}")
    model.save(args.out, experiment=dict(model.extra.get("experiment") or {}, posthoc_ema=record))
    print(f"EMA of sigma_rel {args.sigma_rel:g} (gamma {record['gamma']:.3f}) at step {record['step']} from "
          f"{record['snapshots']} snapshots → {args.out}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="the training run directory (train.out)")
    parser.add_argument("--sigma-rel", type=float, required=True, help="relative EMA width, e.g. 0.08")
    parser.add_argument("--step", type=int, default=None, help="snapshot step to end at (default: the last)")
    parser.add_argument("--out", required=True, help="model directory to write")
