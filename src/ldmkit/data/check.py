"""``ldm data check``: decode every image of a folder or of tar shards and report what was found."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ldmkit.config import apply_overrides, from_dict
from ldmkit.data.config import DataConfig
from ldmkit.data.files import read_caption
from ldmkit.data.images import IMAGE_SUFFIXES, BadImage, load_image
from ldmkit.data.transforms import ImageTransform
from ldmkit.errors import DataError


@dataclass
class CheckReport:
    kind: str  # "folder" or "shards"
    path: str
    max_bad_fraction: float
    sizes: Counter = field(default_factory=Counter)  # (width, height) -> count
    modes: Counter = field(default_factory=Counter)
    labelled: int = 0
    captioned: int = 0
    class_names: list[str] = field(default_factory=list)
    bad: dict[str, str] = field(default_factory=dict)

    @property
    def good(self) -> int:
        return sum(self.sizes.values())

    @property
    def total(self) -> int:
        return self.good + len(self.bad)

    @property
    def bad_fraction(self) -> float:
        return len(self.bad) / max(self.total, 1)

    @property
    def passed(self) -> bool:
        return self.bad_fraction <= self.max_bad_fraction

    def add(self, image, label: int, caption: str) -> None:
        self.sizes[image.size] += 1
        self.modes[image.mode] += 1
        self.labelled += label >= 0
        self.captioned += bool(caption)

    def lines(self) -> list[str]:
        out = [f"{self.kind} {self.path}: {self.total} images, {self.good} readable, {len(self.bad)} bad "
               f"({self.bad_fraction:.1%})"]
        if self.sizes:
            by_area = sorted(self.sizes, key=lambda s: (s[0] * s[1], s))
            common = ", ".join(f"{w}x{h} ({n})" for (w, h), n in self.sizes.most_common(3))
            out.append(f"  sizes: smallest {by_area[0][0]}x{by_area[0][1]}, largest {by_area[-1][0]}x{by_area[-1][1]}; "
                       f"most common {common}")
            out.append("  modes: " + ", ".join(f"{m} {n}" for m, n in self.modes.most_common()))
        good = max(self.good, 1)
        classes = ""
        if self.class_names:
            shown = ", ".join(self.class_names[:8]) + (", ..." if len(self.class_names) > 8 else "")
            classes = f"; {len(self.class_names)} classes: {shown}"
        out.append(f"  labels: {self.labelled} of {self.good} ({self.labelled / good:.0%}){classes}")
        out.append(f"  captions: {self.captioned} of {self.good} ({self.captioned / good:.0%})")
        for name, reason in self.bad.items():
            out.append(f"  bad: {name}: {reason}")
        return out


def _looks_like_shards(path: Path) -> bool:
    text = str(path)
    if path.is_file():
        return path.suffix.lower() == ".tar"
    if path.is_dir():
        return any(path.glob("*.tar")) and not any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir())
    return text.endswith(".tar") and any(c in text for c in "*?[")


def check_data(path: str | Path, overrides: Iterable[str] = ()) -> CheckReport:
    """Decode every image under ``path`` (a folder, or shards: a .tar, a glob, a directory of .tar files)."""
    path = Path(path).expanduser()
    if not path.exists() and not any(c in str(path) for c in "*?["):
        raise DataError(f"{path} does not exist")
    kind = "shards" if _looks_like_shards(path) else "folder"
    data = apply_overrides({"source": kind, "path": str(path)}, overrides)
    cfg = from_dict(DataConfig, data)
    report = CheckReport(kind, str(path), cfg.max_bad_fraction)
    # Count every bad file instead of stopping at the first ones.
    relaxed = dataclasses.replace(cfg, max_bad_fraction=1.0)
    if kind == "folder":
        _check_folder(relaxed, report)
    else:
        _check_shards(relaxed, report)
    return report


def _oversized(transform: ImageTransform, image) -> BadImage | None:
    """Why training would skip ``image`` as too large once resized, or None."""
    try:
        transform.check_size(*image.size)
    except BadImage as exc:
        return exc
    return None


def _check_folder(cfg: DataConfig, report: CheckReport) -> None:
    from ldmkit.data.folder import folder_entries

    _, entries, class_names, bad = folder_entries(cfg)
    report.class_names = class_names
    report.bad.update(bad)
    transform = ImageTransform(cfg)
    for entry in entries:
        try:
            image = load_image(entry.path, cfg.max_pixels)
            transform.check_size(*image.size)  # what training would skip
        except BadImage as exc:
            report.bad[str(entry.path)] = str(exc)
            continue
        caption = entry.caption if entry.caption is not None else (
            read_caption(entry.caption_path) if entry.caption_path else "")
        report.add(image, entry.label, caption)


def _check_shards(cfg: DataConfig, report: CheckReport) -> None:
    from ldmkit.data.shards import ShardDataset

    dataset = ShardDataset(cfg, "all", shuffle=False)
    report.bad.update(dataset.bad.bad)
    handles: dict = {}
    try:
        for s, samples in enumerate(dataset.index):
            for i in range(len(samples)):
                raw = dataset.read_raw(s, i, handles)
                problem = raw.image if isinstance(raw.image, BadImage) else _oversized(dataset.transform, raw.image)
                if problem is not None:
                    report.bad[raw.name] = str(problem)
                else:
                    report.add(raw.image, raw.label, raw.caption)
    finally:
        for f in handles.values():
            f.close()
