"""What a folder of images holds, read before anything is planned: how many images can be used, their sizes
and channels, labels (sub-folders or a manifest) and captions (a manifest or ``.txt`` files), and the bad files.

Only image headers are read (as training's data set does at start), so surveying a large folder is quick; a
file that is truncated further in is caught later by the data loader, which counts it as bad.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ldmkit.data.config import DataConfig
from ldmkit.data.files import read_caption
from ldmkit.data.images import BadImage, probe_image
from ldmkit.errors import DataError

# PIL modes that hold one channel of grey (with or without alpha, or as a palette of greys we cannot know).
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
SHOWN = 3  # file names quoted in an error


@dataclass(frozen=True)
class DataSurvey:
    """The usable images of a folder and what comes with them."""

    path: str
    count: int  # readable images
    sizes: dict[str, int]  # "WxH" -> images
    short_side: int  # median shorter side
    channels: int  # 1 when every image is grey, else 3
    labelled: int  # images with a class label
    class_names: tuple[str, ...]
    class_counts: tuple[int, ...]
    captioned: int  # images with a non-empty caption
    uncaptioned_examples: tuple[str, ...]  # a few images without one
    unlabelled_examples: tuple[str, ...]
    label_source: str  # subfolder or manifest
    bad: dict[str, str] = field(default_factory=dict)

    @property
    def has_captions(self) -> bool:
        return self.captioned > 0

    @property
    def all_captioned(self) -> bool:
        return self.captioned == self.count

    @property
    def all_labelled(self) -> bool:
        return self.labelled == self.count and len(self.class_names) >= 2

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "count": self.count, "sizes": self.sizes, "short_side": self.short_side,
                "channels": self.channels, "labelled": self.labelled, "classes": list(self.class_names),
                "class_counts": list(self.class_counts), "captioned": self.captioned,
                "label_source": self.label_source, "bad": len(self.bad)}

    def lines(self) -> list[str]:
        common = ", ".join(f"{size} ({n})" for size, n in Counter(self.sizes).most_common(3))
        out = [f"data   {self.path}: {self.count} usable images, {len(self.bad)} bad; sizes {common}; "
               f"median shorter side {self.short_side} px; {'grey' if self.channels == 1 else 'colour'}"]
        if self.class_names:
            out.append(f"       {len(self.class_names)} classes from the {self.label_source}s: "
                       + ", ".join(f"{n} ({c})" for n, c in zip(self.class_names[:8], self.class_counts[:8]))
                       + (", ..." if len(self.class_names) > 8 else "") + f"; {self.labelled} labelled")
        out.append(f"       captions: {self.captioned} of {self.count}")
        return out


def folder_config(folder: str | Path) -> DataConfig:
    """The data config of an image folder: labels from a manifest when the folder has one, else sub-folders."""
    root = Path(folder).expanduser()
    manifest = any((root / name).is_file() for name in ("manifest.csv", "manifest.jsonl"))
    return DataConfig(source="folder", path=str(root), label_source="manifest" if manifest else "subfolder")


def survey_folder(folder: str | Path, cfg: DataConfig | None = None) -> DataSurvey:
    """Survey ``folder``; a one-line DataError when it is missing or holds no usable image."""
    from ldmkit.data.folder import folder_entries

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(f"{folder} is not a folder; give a folder of images (jpg, png, webp), sub-folders for classes")
    cfg = cfg or folder_config(root)
    try:
        _, entries, class_names, bad_entries = folder_entries(cfg)
    except DataError as exc:
        raise DataError(f"{exc}; put jpg/png/webp images in it (one sub-folder per class for labels)") from None
    bad = dict(bad_entries)
    sizes: Counter = Counter()
    shorts: list[int] = []
    grey = True
    labels: Counter = Counter()
    captioned, uncaptioned, unlabelled = 0, [], []
    for entry in entries:
        try:
            width, height, mode, _ = probe_image(entry.path, cfg.max_pixels)
        except BadImage as exc:
            bad[entry.key] = str(exc)
            continue
        sizes[f"{width}x{height}"] += 1
        shorts.append(min(width, height))
        grey = grey and mode in GREY_MODES
        if entry.label >= 0:
            labels[entry.label] += 1
        elif len(unlabelled) < SHOWN:
            unlabelled.append(entry.key)
        caption = entry.caption if entry.caption is not None else (
            read_caption(entry.caption_path) if entry.caption_path else "")
        if caption:
            captioned += 1
        elif len(uncaptioned) < SHOWN:
            uncaptioned.append(entry.key)
    count = len(shorts)
    if count == 0:
        why = f" ({len(bad)} files could not be read, e.g. {next(iter(bad))})" if bad else ""
        raise DataError(f"{root} holds no usable images{why}; give a folder of jpg/png/webp images")
    return DataSurvey(
        path=str(root), count=count, sizes=dict(sizes), short_side=int(statistics.median_low(shorts)),
        channels=1 if grey else 3, labelled=sum(labels.values()), class_names=tuple(class_names),
        class_counts=tuple(labels.get(i, 0) for i in range(len(class_names))), captioned=captioned,
        uncaptioned_examples=tuple(uncaptioned), unlabelled_examples=tuple(unlabelled),
        label_source="manifest" if cfg.label_source == "manifest" else "sub-folder", bad=bad)


__all__ = ["DataSurvey", "folder_config", "survey_folder"]
