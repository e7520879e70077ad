"""``RUN/report.html``: summary, timings and hardware, plots, image grids and the settings of a run.

The page is static and self-contained apart from its images, which it links relatively (plots in
``RUN/report/``, grids where the run wrote them), so the run directory can be copied and opened anywhere.
"""

from __future__ import annotations

import datetime
import html
import os
from pathlib import Path

import yaml

from ldmkit.report.plots import GROUPS, plot_groups
from ldmkit.report.run_record import RunRecord, read_run

REPORT_NAME = "report.html"
PLOTS_DIR = "report"
GRIDS_SHOWN = 3  # the latest few grids of each name

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; } td, th { padding: .2em .8em; text-align: left; border-bottom: 1px solid #eee; }
img { max-width: 100%; image-rendering: pixelated; } figure { display: inline-block; margin: .5em; }
figcaption { font-size: .85em; color: #555; } pre { background: #f6f6f6; padding: .8em; overflow-x: auto; }
"""


def write_report(run: str | Path) -> Path:
    """Build ``RUN/report.html`` (and its plots) from what the run directory holds; returns the page."""
    from ldmkit.report.fit_page import is_fit_run, write_fit_report

    if is_fit_run(Path(run)):  # an `ldm fit` run: its plan, stages and evaluation around two training runs
        return write_fit_report(run)
    record = read_run(run)
    plots_dir = record.path / PLOTS_DIR
    for group in GROUPS:  # last time's plots: a group may have no scalars now
        (plots_dir / f"{group.replace(' ', '-')}.png").unlink(missing_ok=True)
    plots = plot_groups(record.scalars, plots_dir)
    page = record.path / REPORT_NAME
    tmp = page.with_name(f".{REPORT_NAME}.tmp")
    tmp.write_text(render(record, {group: path.relative_to(record.path) for group, path in plots.items()}))
    os.replace(tmp, page)
    return page


def render(record: RunRecord, plots: dict[str, Path]) -> str:
    title = f"{record.kind} run {record.path.name}"
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>"
             f"<style>{_STYLE}</style></head><body>", f"<h1>{_e(title)}</h1>",
             _summary(record), _starts(record)]
    parts.append("<h2>Training curves</h2>")
    if plots:
        parts += [f'<figure><img src="{_e(path.as_posix())}" alt="{_e(group)}"><figcaption>{_e(group)}'
                  "</figcaption></figure>" for group, path in plots.items()]
    else:
        parts.append("<p>No scalars were logged (the run has no TensorBoard files in tb/).</p>")
    parts.append(_grids(record))
    parts.append("<h2>Settings</h2><pre>" + _e(yaml.safe_dump(record.config, sort_keys=False)) + "</pre>")
    if len(record.history) > 1:
        parts.append("<p>Started or resumed " + str(len(record.history)) + " times; each start's config is in "
                     "config-history/: " + ", ".join(_e(name) for name, _ in record.history) + ".</p>")
    parts.append(f"<p><small>written {_e(_now())} by ldm report</small></p></body></html>\n")
    return "\n".join(parts)


def _summary(record: RunRecord) -> str:
    rows = [("kind", record.kind), ("directory", str(record.path.resolve())),
            ("steps", f"{record.steps_done} of {record.steps_planned}"),
            ("checkpoints", ", ".join(map(str, record.checkpoints)) or "none"),
            ("model", str(record.model.relative_to(record.path)) if record.model else "not written yet")]
    times = [s.wall_time for series in record.scalars.values() for s in series]
    if times:
        rows.append(("logged from", f"{_time(min(times))} to {_time(max(times))}"))
    throughput = next((series for tag, series in record.scalars.items() if tag.endswith("/img_per_s")), None)
    if throughput:
        values = sorted(s.value for s in throughput)
        rows.append(("throughput", f"{values[len(values) // 2]:.4g} img/s (median of {len(values)} windows)"))
    last = {tag: series[-1].value for tag, series in record.scalars.items()
            if series and tag.rsplit("/", 1)[-1] not in ("lr", "img_per_s")}
    if last:
        rows.append(("last values", ", ".join(f"{tag.rsplit('/', 1)[-1]} {v:.4g}" for tag, v in sorted(last.items()))))
    return "<h2>Summary</h2>" + _table(rows)


def _starts(record: RunRecord) -> str:
    if not record.starts:
        return ""
    keys = ("time", "step", "device", "world_size", "host", "torch", "ldmkit")
    head = "".join(f"<th>{_e(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{_e(str(start.get(k, '')))}</td>" for k in keys) + "</tr>"
                   for start in record.starts)
    return f"<h2>Starts and hardware</h2><table><tr>{head}</tr>{body}</table>"


def _grids(record: RunRecord) -> str:
    if not record.grids:
        return "<h2>Image grids</h2><p>No image grids were written (train.image_every was 0 or not reached).</p>"
    parts = ["<h2>Image grids</h2>"]
    for name, grids in sorted(record.grids.items()):
        parts.append(f"<h3>{_e(name)}</h3>")
        for step, file in grids[-GRIDS_SHOWN:]:
            parts.append(f'<figure><img src="{_e(file.relative_to(record.path).as_posix())}" alt="{_e(name)} at '
                         f'step {step}"><figcaption>step {step}</figcaption></figure>')
    return "\n".join(parts)


def _table(rows: list[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows) + "</table>"


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _time(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


__all__ = ["REPORT_NAME", "render", "write_report"]
