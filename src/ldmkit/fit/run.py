"""``ldm fit``'s stages in order, each skipped when RUN/stages.json says it is done:

autoencoder → latents → diffusion → model → evaluation → report

Under ``torchrun`` every process runs the trainers and the encoding (each its share); rank 0 alone writes
RUN/'s records, the model, the evaluation and the report, while the others wait at a barrier.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from ldmkit.evaluation.distributed import this_rank_alone
from ldmkit.fit.plan import Plan
from ldmkit.fit.record import STAGES, read_stages, stage, stage_done
from ldmkit.fit.stages import (check_reused_autoencoder, data_config, encode_latents, train_autoencoder,
                               train_diffusion)
from ldmkit.runtime import is_main_process


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _say(text: str) -> None:
    if is_main_process():
        print(text, flush=True)


def run_fit(plan: Plan, folder: str, label_source: str, run: Path, device: torch.device,
            stop_after: str | None = None) -> Path:
    """Run (or resume) every stage of ``plan`` in ``run``; returns RUN/model. ``stop_after`` ends the run after
    that stage (the next run continues from there)."""
    from ldmkit.training.distributed import local_device, process_group

    device = local_device(device)
    data = data_config(plan, folder, label_source)
    main = is_main_process()
    done_before = {name for name, entry in read_stages(run).items() if entry.get("done")}
    if done_before:
        _say("resuming: " + ", ".join(s for s in STAGES if s in done_before) + " done")
    ae_model = Path(plan.autoencoder_dir) if plan.autoencoder_dir else run / "autoencoder" / "model"
    with process_group(device):
        for name in STAGES:
            if not stage_done(run, name):
                _say(f"[{STAGES.index(name) + 1}/{len(STAGES)}] {name}")
                with stage(run, name, main=main) as record:
                    _run_stage(name, plan, data, ae_model, run, device, record, main)
                _barrier()
            if name == stop_after:
                _say(f"stopped after the {name} stage; rerun the same command to continue")
                break
    return run / "model"


def _run_stage(name: str, plan: Plan, data, ae_model: Path, run: Path, device: torch.device, record: dict,
               main: bool) -> None:
    if name == "autoencoder":
        if plan.trains_autoencoder:
            train_autoencoder(plan, data, run, str(device))
        elif main:
            record["reused"] = str(ae_model)
            with this_rank_alone():  # the others wait at the barrier
                record["check"] = check_reused_autoencoder(str(ae_model), data, device)
    elif name == "latents":
        encode_latents(ae_model, data, run / "latents", device, batch=max(plan.ae.batch, 32))
    elif name == "diffusion":
        train_diffusion(plan, data, ae_model, run / "latents", run, str(device))
    elif not main:
        return
    elif name == "model":
        _copy_model(run / "diffusion" / "model", run / "model")
    elif name == "evaluation":
        from ldmkit.fit.evaluate import evaluate_fit

        with this_rank_alone():  # the others wait at the barrier
            summary = evaluate_fit(plan, data, run / "model", run, device)
        record["generation"] = summary["generation"]["metrics"]
    elif name == "report":
        from ldmkit.report import write_report

        record["file"] = str(write_report(run).relative_to(run))


def _copy_model(source: Path, target: Path) -> None:
    """RUN/model: the diffusion run's model directory (with its autoencoder/), replaced whole."""
    staging = target.with_name(f".{target.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(source, staging)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)


__all__ = ["run_fit"]
