"""The evaluation stage of ``ldm fit``, on the images held out from training (RUN/eval/):

- ``reconstruction.json`` / ``.png``: the autoencoder against bicubic at the same number of values (PSNR, SSIM,
  LPIPS, rFD), :func:`~ldmkit.evaluation.reconstruction_eval.evaluate_reconstruction`;
- ``reference.npz`` and ``generation.json``: FD / KD / precision / recall of generated images against the
  held-out split (classes cycled; a text model gets the held-out captions), ``ldm eval generation``'s function;
- ``samples.png``: a grid with one row per class or caption (per seed for an unconditional model);
- ``eval.json``: the numbers of both, for the report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ldmkit.data import DataConfig
from ldmkit.fit.plan import Plan

EVAL_DIR = "eval"
SUMMARY = "eval.json"


def evaluate_fit(plan: Plan, data: DataConfig, model_dir: Path, run: Path, device: torch.device) -> dict[str, Any]:
    """Run every evaluation into RUN/eval and return the summary written to RUN/eval/eval.json."""
    from ldmkit.data import build_dataset

    out = run / EVAL_DIR
    out.mkdir(parents=True, exist_ok=True)
    held_out = build_dataset(data, split="val")
    summary: dict[str, Any] = {"held_out_images": len(held_out), "feature": plan.eval.feature}
    summary["reconstruction"] = _reconstruction(plan, held_out, model_dir / "autoencoder", out, device)
    summary["generation"] = _generation(plan, data, held_out, model_dir, out, device)
    summary["grid"] = _grid(plan, held_out, model_dir, out, device)
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _reconstruction(plan: Plan, held_out: Any, autoencoder: Path, out: Path, device: torch.device) -> dict:
    from ldmkit.autoencoders import load_autoencoder
    from ldmkit.evaluation.extractor import build_feature_extractor
    from ldmkit.evaluation.reconstruction_eval import evaluate_reconstruction, write_reconstruction_report
    from ldmkit.evaluation.sources import dataset_batches

    lpips = None
    if plan.eval.lpips:
        from ldmkit.autoencoders.lpips import LPIPS

        lpips = LPIPS.from_assets(plan.eval.lpips_net)
    features = build_feature_extractor(plan.eval.feature, device=device)
    result = evaluate_reconstruction(load_autoencoder(autoencoder, device=device),
                                     dataset_batches(held_out, batch_size=32, limit=plan.eval.reconstructions),
                                     lpips=lpips, features=features, device=device)
    extra = {"autoencoder": str(autoencoder), "split": "val", "lpips_net": plan.eval.lpips_net if lpips else None}
    write_reconstruction_report(result, out, extra=extra)
    return result["metrics"]


def _generation(plan: Plan, data: DataConfig, held_out: Any, model_dir: Path, out: Path,
                device: torch.device) -> dict:
    from ldmkit.config import to_dict
    from ldmkit.data import dataset_captions
    from ldmkit.evaluation.evaluate import compute_reference_stats
    from ldmkit.evaluation.generation import evaluate_generation
    from ldmkit.evaluation.sources import ReferenceOrigin, dataset_batches
    from ldmkit.pipelines import load_pipeline

    reference = compute_reference_stats(
        dataset_batches(held_out, batch_size=50), plan.eval.feature, device=device,
        source=ReferenceOrigin(f"held-out split of {data.path}", {"config": to_dict(data), "split": "val"}))
    reference.save(out / "reference.npz")
    pipe = load_pipeline(model_dir, device=device)
    prompts = dataset_captions(held_out) if plan.conditioner.takes_text else None
    # Precision and recall need more reference images than neighbours; KD needs two.
    pr_k = min(3, len(held_out) - 1)
    metrics = ("fd", "kd", "pr") if pr_k >= 1 else ("fd", "kd")
    result = evaluate_generation(pipe, reference, n=plan.eval.samples, prompts=prompts, sampler=plan.eval.sampler,
                                 steps=plan.eval.sampler_steps, guidance=_guidance(plan), metrics=metrics,
                                 pr_k=max(1, pr_k), batch_size=plan.sampling_batch, progress=True)
    (out / "generation.json").write_text(json.dumps(result, indent=2) + "\n")
    return {"metrics": result["metrics"], "samples": result["num_images"],
            "sampling_images_per_second": result["sampling_images_per_second"]}


def _guidance(plan: Plan) -> float:
    return 1.0 if plan.conditioner.unconditional else plan.eval.guidance


def _grid(plan: Plan, held_out: Any, model_dir: Path, out: Path, device: torch.device) -> dict:
    """One row per class (or held-out caption), ``grid_seeds`` columns; unconditional: rows of seeds."""
    from ldmkit.data import dataset_captions
    from ldmkit.io.images import make_grid, save_grid, to_unit
    from ldmkit.pipelines import load_pipeline

    pipe = load_pipeline(model_dir, device=device)
    seeds, rows = plan.eval.grid_seeds, plan.eval.grid_conditions
    options = {"sampler": plan.eval.sampler, "steps": plan.eval.sampler_steps, "guidance": _guidance(plan),
               "output": "tensor", "progress": False}
    if plan.conditioner.takes_text:
        captions = list(dict.fromkeys(dataset_captions(held_out)))[:rows]
        images = [pipe([c] * seeds, seed=0, **options) for c in captions]
        labels = captions
    elif plan.conditioner.takes_labels:
        classes = list(range(min(rows, plan.conditioner.num_classes)))
        images = [pipe(class_label=[k] * seeds, seed=0, **options) for k in classes]
        names = list(getattr(held_out, "class_names", []))
        labels = [names[k] if k < len(names) else str(k) for k in classes]
    else:
        images = [pipe(n=seeds, seed=1000 * r, **options) for r in range(rows)]
        labels = [f"seeds {1000 * r}..{1000 * r + seeds - 1}" for r in range(rows)]
    path = save_grid(make_grid(to_unit(torch.cat(images)), nrow=seeds), out / "samples.png")
    return {"file": str(path.relative_to(out.parent)), "rows": labels}


__all__ = ["EVAL_DIR", "SUMMARY", "evaluate_fit"]
