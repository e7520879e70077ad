"""``RUN/report.html`` of an ``ldm fit`` run: the data and the plan, the stage timings, the evaluation numbers and
pictures, then each training stage's curves, grids and starts as ``ldm report`` shows a training run.

Reads only files: RUN/plan.json, RUN/stages.json, RUN/eval/*.json and the two training runs' directories.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ldmkit.report.page import PLOTS_DIR, REPORT_NAME, _e, _grids, _now, _starts, _STYLE, _summary, _table
from ldmkit.report.plots import plot_groups
from ldmkit.report.run_record import read_run

TRAINING_RUNS = ("autoencoder", "diffusion")


def is_fit_run(path: Path) -> bool:
    plan = path / "plan.json"
    if not plan.is_file() or (path / "config.yaml").is_file():
        return False
    try:
        return "survey" in json.loads(plan.read_text())
    except (OSError, ValueError):
        return False


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def write_fit_report(run: str | Path) -> Path:
    run = Path(run)
    record = _json(run / "plan.json")
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>ldm fit {_e(run.name)}</title>"
             f"<style>{_STYLE}</style></head><body>", f"<h1>ldm fit run {_e(run.name)}</h1>",
             _data(record.get("survey", {})), _plan(record.get("plan", {}), record.get("options", {})),
             _stages(_json(run / "stages.json")), _evaluation(run)]
    for name in TRAINING_RUNS:
        parts.append(_training(run, name))
    parts.append(f"<p><small>written {_e(_now())} by ldm report</small></p></body></html>\n")
    page = run / REPORT_NAME
    tmp = page.with_name(f".{REPORT_NAME}.tmp")
    tmp.write_text("\n".join(parts))
    os.replace(tmp, page)
    return page


def _data(survey: dict[str, Any]) -> str:
    rows = [(k, str(survey.get(k))) for k in ("path", "count", "short_side", "channels", "labelled", "captioned",
                                             "bad") if k in survey]
    if survey.get("classes"):
        rows.append(("classes", ", ".join(f"{n} ({c})" for n, c in zip(survey["classes"], survey["class_counts"]))))
    return "<h2>Data</h2>" + _table(rows)


def _plan(plan: dict[str, Any], options: dict[str, Any]) -> str:
    est = plan.get("estimate", {})
    ae, ldm, ev = plan.get("ae", {}), plan.get("ldm", {}), plan.get("eval", {})
    first, unet = plan.get("autoencoder", {}), plan.get("unet", {})
    f = 2 ** (len(first.get("channel_mult", [1])) - 1)
    side = plan.get("resolution", 0)
    rows = [("row", f"{plan.get('row')} ({plan.get('gpus')} x {plan.get('device')})"),
            ("budget", f"{plan.get('budget_minutes', 0):g} min"),
            ("resolution, f, latent", f"{side} px, f = {f}, {side // f}x{side // f}x{first.get('latent_channels')}"),
            ("autoencoder", f"reuse {plan['autoencoder_dir']}" if plan.get("autoencoder_dir") else
             f"base {first.get('base_channels')}, mult {first.get('channel_mult')}, "
             f"{est.get('ae_parameters', 0) / 1e6:.2f} M parameters; batch {ae.get('batch')} x {ae.get('steps')} steps"),
            ("UNet", f"width {unet.get('model_channels')}, mult {unet.get('channel_mult')}, "
                     f"{est.get('unet_parameters', 0) / 1e6:.2f} M parameters; batch {ldm.get('batch')} x "
                     f"{ldm.get('steps')} steps"),
            ("conditioning", str(options.get("conditioning"))),
            ("evaluation", f"{ev.get('samples')} samples, {ev.get('reconstructions')} reconstructions, "
                           f"feature {ev.get('feature')}"),
            ("expected minutes", f"{est.get('ae_minutes')} + {est.get('ldm_minutes')} + {est.get('other_minutes')} "
                                 f"= {est.get('total_minutes')}"),
            ("expected memory", f"autoencoder {est.get('ae_memory_bytes', 0) / 2**30:.2f} GiB, diffusion "
                                f"{est.get('ldm_memory_bytes', 0) / 2**30:.2f} GiB"),
            ("numbers from", str(plan.get("source", ""))),
            ("overrides", " ".join(options.get("overrides") or []) or "none")]
    return "<h2>Plan</h2>" + _table(rows)


def _stages(stages: dict[str, Any]) -> str:
    if not stages:
        return "<h2>Stages</h2><p>No stage has run yet.</p>"
    rows = [(name, f"{'done' if entry.get('done') else 'not finished'}, {entry.get('seconds', 0):.1f} s"
                   f" in {entry.get('attempts', 1)} run(s)") for name, entry in stages.items()]
    rows.append(("total", f"{sum(e.get('seconds', 0) for e in stages.values()):.1f} s"))
    return "<h2>Stages</h2>" + _table(rows)


def _evaluation(run: Path) -> str:
    summary = _json(run / "eval" / "eval.json")
    if not summary:
        return "<h2>Evaluation</h2><p>Not run yet.</p>"
    parts = [f"<h2>Evaluation</h2><p>On {summary.get('held_out_images')} held-out images.</p>"]
    recon = summary.get("reconstruction", {})
    if recon:
        names = sorted({k for values in recon.values() for k in values})
        head = "<tr><th></th>" + "".join(f"<th>{_e(n)}</th>" for n in names) + "</tr>"
        body = "".join("<tr><th>" + _e(method) + "</th>" + "".join(
            f"<td>{values[n]:.4g}</td>" if n in values else "<td></td>" for n in names) + "</tr>"
            for method, values in recon.items())
        parts.append(f"<h3>Reconstruction (autoencoder vs bicubic)</h3><table>{head}{body}</table>")
    generation = summary.get("generation", {})
    if generation:
        parts.append(f"<h3>Generation ({generation.get('samples')} samples vs the held-out split)</h3>"
                     + _table([(k, f"{v:.4g}") for k, v in generation.get("metrics", {}).items()]))
    for name, caption in (("eval/samples.png", "samples: one row per " + _rows_of(summary)),
                          ("eval/reconstruction.png", "original | autoencoder | bicubic")):
        if (run / name).is_file():
            parts.append(f'<figure><img src="{name}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption>'
                         "</figure>")
    return "\n".join(parts)


def _rows_of(summary: dict[str, Any]) -> str:
    rows = summary.get("grid", {}).get("rows", [])
    return "row: " + ", ".join(rows[:10]) if rows else "condition"


def _training(run: Path, name: str) -> str:
    path = run / name
    if not (path / "config.yaml").is_file():
        return ""
    record = read_run(path)
    plots = plot_groups(record.scalars, run / PLOTS_DIR / name)
    figures = "".join(f'<figure><img src="{_e(p.relative_to(run).as_posix())}" alt="{_e(g)}"><figcaption>{_e(g)}'
                      "</figcaption></figure>" for g, p in plots.items())
    grids = _grids(record).replace('src="', f'src="{name}/').replace("<h2>Image grids</h2>", "<h3>Image grids</h3>")
    return (f"<h2>Training: {_e(name)}</h2>" + _summary(record).replace("<h2>Summary</h2>", "") + _starts(record)
            .replace("<h2>", "<h3>").replace("</h2>", "</h3>") + figures + grids)


__all__ = ["is_fit_run", "write_fit_report"]
