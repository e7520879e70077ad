"""Folders of image files as evaluation input (so samples of any system can be scored).

Files with the extensions in :data:`IMAGE_EXTENSIONS` are found recursively and sorted by path. Each is
read as 8-bit RGB: grey images are repeated to three channels, images with transparency are composited
over white. Values map to [-1, 1] as ``v / 127.5 − 1``, the inverse of the quantisation in
:func:`ldmkit.evaluation.extractor.to_uint8_levels`, so a saved sample scores exactly as it did in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from ldmkit.errors import DataError
from ldmkit.evaluation.distributed import shard_indices

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def list_image_files(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted; an error when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise DataError(f"image folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def read_image(path: str | Path) -> torch.Tensor:
    """One image file → [3, H, W] float32 in [-1, 1]."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                image = Image.alpha_composite(background, rgba)
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path} cannot be read as an image ({exc})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 127.5 - 1  # [3, H, W]


class _ImageFiles(Dataset):
    def __init__(self, files: list[Path]):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        return read_image(self.files[index])


def folder_batches(folder: str | Path, *, batch_size: int = 50, limit: int | None = None,
                   num_workers: int = 0) -> Iterator[torch.Tensor]:
    """Batches [B, 3, H, W] in [-1, 1] of this rank's share of the folder's images.

    Consecutive images of one size form a batch; a change of size starts a new one. ``limit`` caps the
    number of files taken from the folder (over all ranks).
    """
    files = list_image_files(folder)  # listed now, so a bad folder fails before any work starts
    if limit is not None:
        files = files[:limit]
    mine = [files[i] for i in shard_indices(len(files))]
    return _batches(mine, batch_size, num_workers)


def _batches(files: list[Path], batch_size: int, num_workers: int) -> Iterator[torch.Tensor]:
    loader = DataLoader(_ImageFiles(files), batch_size=None, shuffle=False, num_workers=num_workers)
    pending: list[torch.Tensor] = []
    for image in loader:
        if pending and (image.shape != pending[0].shape or len(pending) == batch_size):
            yield torch.stack(pending)
            pending = []
        pending.append(image)
    if pending:
        yield torch.stack(pending)
