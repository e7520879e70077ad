"""The run's scalars as PNG plots (matplotlib, no display needed): one figure per group, one panel per tag."""

from __future__ import annotations

import math
from pathlib import Path

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
            ax.plot([s.step for s in series], [s.value for s in series], linewidth=1.2)
            ax.set_title(tag, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
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


def _spans_decades(series: list[Scalar]) -> bool:
    values = [s.value for s in series]
    return max(values) / max(min(values), 1e-30) > 30


__all__ = ["GROUPS", "group_of", "plot_groups"]
