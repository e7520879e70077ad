"""What a run directory says about its run, read without loading any network."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ldmkit.errors import LdmkitError

# Image grids are written as RUN/images/<name>-<step>.png.
_GRID = re.compile(r"^(?P<name>.+)-(?P<step>\d{8,})\.png$")


class ReportError(LdmkitError):
    """The directory is not a run, or a part needed for the report is missing."""


@dataclass(frozen=True)
class Scalar:
    step: int
    wall_time: float  # seconds since the epoch
    value: float


@dataclass
class RunRecord:
    """A run directory, read: settings, logged scalars, grids, checkpoints and the starts of the run."""

    path: Path
    config: dict[str, Any]
    history: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (file name, config) per start
    scalars: dict[str, list[Scalar]] = field(default_factory=dict)  # tag → one value per step, in order
    grids: dict[str, list[tuple[int, Path]]] = field(default_factory=dict)  # name → (step, file) in order
    checkpoints: list[int] = field(default_factory=list)
    starts: list[dict[str, Any]] = field(default_factory=list)
    model: Path | None = None

    @property
    def kind(self) -> str:
        """``autoencoder`` or ``diffusion``, from the keys of the experiment config."""
        return "diffusion" if "unet" in self.config else "autoencoder"

    @property
    def steps_planned(self) -> int | None:
        return self.config.get("train", {}).get("steps")

    @property
    def steps_done(self) -> int:
        last_logged = max((series[-1].step for series in self.scalars.values() if series), default=0)
        return max([last_logged, *self.checkpoints])


def read_run(path: str | Path) -> RunRecord:
    """Read a run directory written by ``ldm train``."""
    path = Path(path)
    config_path = path / "config.yaml"
    if not config_path.is_file():
        raise ReportError(f"{path} is not a training run: it has no config.yaml (give the train.out of a run)")
    record = RunRecord(path=path, config=_yaml(config_path))
    history = path / "config-history"
    if history.is_dir():
        record.history = [(p.name, _yaml(p)) for p in sorted(history.glob("*.yaml"))]
    record.scalars = read_scalars(path / "tb")
    images = path / "images"
    for file in sorted(images.glob("*.png")) if images.is_dir() else []:
        match = _GRID.match(file.name)
        if match:
            record.grids.setdefault(match["name"], []).append((int(match["step"]), file))
    for grids in record.grids.values():
        grids.sort()
    checkpoints = path / "checkpoints"
    if checkpoints.is_dir():
        record.checkpoints = sorted(int(p.name.split("-")[1]) for p in checkpoints.glob("step-*")
                                    if (p / "MANIFEST.json").is_file())
    starts = path / "starts.jsonl"
    if starts.is_file():
        record.starts = [json.loads(line) for line in starts.read_text().splitlines() if line.strip()]
    if (path / "model" / "config.json").is_file():
        record.model = path / "model"
    return record


def read_scalars(tb_dir: Path) -> dict[str, list[Scalar]]:
    """Every scalar tag of the TensorBoard files in ``tb_dir``; a step logged again after a resume keeps its
    latest value."""
    if not tb_dir.is_dir():
        return {}
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        raise ReportError('reading training logs needs tensorboard: pip install "ldmkit[report]"') from None
    accumulator = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0, "images": 1, "tensors": 1})
    accumulator.Reload()
    scalars = {}
    for tag in accumulator.Tags().get("scalars", []):
        by_step: dict[int, Scalar] = {}
        for event in accumulator.Scalars(tag):
            by_step[event.step] = Scalar(event.step, event.wall_time, float(event.value))
        scalars[tag] = [by_step[s] for s in sorted(by_step)]
    return scalars


def _yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path} cannot be read ({exc.__class__.__name__}); restore it or rerun the training") \
            from None
    return data if isinstance(data, dict) else {}


__all__ = ["ReportError", "RunRecord", "Scalar", "read_run", "read_scalars"]
