"""A grid of samples with their labels and captions written underneath (``ldm data preview``)."""

from __future__ import annotations

import itertools
import textwrap
from pathlib import Path
from typing import Iterable, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from ldmkit.config.checks import check_count
from ldmkit.errors import ConfigError, DataError

MAX_SAMPLES = 1024  # samples in one preview grid
MAX_CELL = 1024  # pixels per sample


def check_preview_size(count: int, columns: int, cell: int) -> None:
    """Refuse a preview that is empty or would be an enormous image, before any sample is read."""
    for name, value, most in (("count", count, MAX_SAMPLES), ("columns", columns, MAX_SAMPLES),
                              ("cell", cell, MAX_CELL)):
        if check_count(f"--{name}", value) > most:
            raise ConfigError(f"--{name} must be at most {most}; got {value}")


def tensor_to_image(image: torch.Tensor) -> Image.Image:
    """``[C, H, W]`` in ``[-1, 1]`` -> an RGB or L PIL image."""
    array = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array[:, :, 0], "L") if array.shape[2] == 1 else Image.fromarray(array, "RGB")


def sample_text(sample: dict, class_names: Sequence[str]) -> str:
    label = int(sample.get("label", -1))
    parts = []
    if label >= 0:
        name = class_names[label] if label < len(class_names) else ""
        parts.append(f"[{label}] {name}".strip())
    if sample.get("caption"):
        parts.append(str(sample["caption"]))
    return ": ".join(parts)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int, max_lines: int) -> list[str]:
    char_width = max(draw.textlength("abcdefghij", font=font) / 10, 1.0)
    lines = textwrap.wrap(text, width=max(int(width / char_width), 4)) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(len(lines[-1]) - 1, 0)] + "…"
    return lines


def preview_grid(samples: Iterable[dict], class_names: Sequence[str] = (), *, count: int = 16, columns: int = 4,
                 cell: int = 128, text_lines: int = 3) -> Image.Image:
    """The first ``count`` samples, ``cell`` pixels wide, with up to ``text_lines`` lines of text under each."""
    check_preview_size(count, columns, cell)
    taken = list(itertools.islice(samples, count))
    if not taken:
        raise DataError("the data set yielded no samples to preview")
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    top, bottom = font.getbbox("Ag")[1::2]
    line_height = int(bottom - min(top, 0)) + 3
    text_height = text_lines * line_height + 4
    columns = max(1, min(columns, len(taken)))
    rows = -(-len(taken) // columns)
    pad = 4
    grid = Image.new("RGB", (columns * (cell + pad) + pad, rows * (cell + text_height + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for n, sample in enumerate(taken):
        image = tensor_to_image(sample["image"]).convert("RGB")
        upscale = image.width < cell
        image = image.resize((cell, cell), Image.Resampling.NEAREST if upscale else Image.Resampling.LANCZOS)
        x = pad + (n % columns) * (cell + pad)
        y = pad + (n // columns) * (cell + text_height + pad)
        grid.paste(image, (x, y))
        for k, line in enumerate(_wrap(probe, sample_text(sample, class_names), font, cell, text_lines)):
            draw.text((x, y + cell + 2 + k * line_height), line, fill="black", font=font)
    return grid


def save_preview(samples: Iterable[dict], out: str | Path, class_names: Sequence[str] = (), **kwargs) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    preview_grid(samples, class_names, **kwargs).save(out)
    return out


def first_samples(dataset, count: int) -> Iterable[dict]:
    """The first ``count`` samples of a map-style or iterable data set."""
    if hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__") and not isinstance(
            dataset, torch.utils.data.IterableDataset):
        return (dataset[i] for i in range(min(count, len(dataset))))
    return itertools.islice(iter(dataset), count)

