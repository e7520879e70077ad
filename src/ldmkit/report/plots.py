"""The run's scalars as PNG plots (matplotlib, no display needed): one figure per group, one panel per tag.

Validation scores are drawn against wall-clock minutes (what "how long until the model is good" asks), with the
step on the top axis; the other groups against the step.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ldmkit.report.run_record import ReportError, Scalar

# The figures of a report, in page order; group_of() puts each tag in one of them.
GROUPS = ("losses", "validation", "learning rate", "throughput")


def group_of(tag: str) -> str:
    """The figure a tag is drawn in, from its last part (``autoencoder/lr`` → ``lr``)."""
    name = tag.rsplit("/", 1)[-1]
    if name.startswith("val") or "fd" in name.split("_"):
        return "validation"
    if name == "lr":
        return "learning rate"
    if name == "img_per_s":
        return "throughput"
    return "losses"


def plot_groups(scalars: dict[str, list[Scalar]], directory: Path) -> dict[str, Path]:
    """Write one PNG per non-empty group into ``directory``; returns group → file."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ReportError('plots need matplotlib: pip install "ldmkit[report]"') from None
    directory.mkdir(parents=True, exist_ok=True)
    grouped: dict[str, list[str]] = {}
    for tag in sorted(scalars):
        if scalars[tag]:
            grouped.setdefault(group_of(tag), []).append(tag)
    start = min(s.wall_time for series in scalars.values() for s in series) if grouped else 0.0
    files = {}
    for group in GROUPS:
        tags = grouped.get(group)
        if not tags:
            continue
        columns = min(3, len(tags))
        rows = math.ceil(len(tags) / columns)
        figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 2.8 * rows), squeeze=False)
        for ax, tag in zip(axes.flat, tags):
            series = scalars[tag]
            if group == "validation":
                _against_minutes(ax, series, start)
            else:
                ax.plot([s.step for s in series], [s.value for s in series], linewidth=1.2)
                ax.set_xlabel("step", fontsize=8)
            ax.set_title(tag, fontsize=9)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if group == "losses" and all(s.value > 0 for s in series) and _spans_decades(series):
                ax.set_yscale("log")
        for ax in list(axes.flat)[len(tags):]:
            ax.axis("off")
        figure.tight_layout()
        path = directory / f"{group.replace(' ', '-')}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        files[group] = path
    return files


def _against_minutes(ax, series: list[Scalar], start: float) -> None:
    """``series`` over wall-clock minutes since the run's first logged scalar (a pause between a stop and its
    resume is included: the label says so), with the steps on a top axis."""
    minutes = [(s.wall_time - start) / 60 for s in series]
    steps = [s.step for s in series]
    ax.plot(minutes, [s.value for s in series], linewidth=1.2, marker="o" if len(series) < 30 else None,
            markersize=3)
    ax.set_xlabel("minutes since the first logged step (wall clock)", fontsize=8)
    ax.ticklabel_format(axis="y", useOffset=False)  # an offset label would sit on the top axis' ticks
    if len(series) > 1 and all(b > a for a, b in zip(minutes, minutes[1:])):
        top = ax.secondary_xaxis("top", functions=(lambda m: np.interp(m, minutes, steps),
                                                   lambda k: np.interp(k, steps, minutes)))
        top.set_xlabel("step", fontsize=8)
        top.tick_params(labelsize=7)


def _spans_decades(series: list[Scalar]) -> bool:
    values = [s.value for s in series]
    return max(values) / max(min(values), 1e-30) > 30


__all__ = ["GROUPS", "group_of", "plot_groups"]
