"""A map-style data set of image files with labels and captions (shared by the folder and emoji sources).

At construction every file's header is read (fast): zero-byte files, non-images and decompression bombs
are dropped there. A file that fails later, while decoding (truncated), is replaced by the next good
one. Both are logged with the file's name and counted in :attr:`FileImages.bad`, which raises a
:class:`~ldmkit.errors.DataError` once more than ``max_bad_fraction`` of the files are bad.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from torch.utils.data import Dataset

from ldmkit.data.config import DataConfig
from ldmkit.data.images import BadFiles, BadImage, load_image, probe_image
from ldmkit.data.transforms import ImageTransform
from ldmkit.errors import DataError


@dataclass(frozen=True)
class FileEntry:
    path: Path
    key: str  # stable name of the item (relative path, code points), used for splits and messages
    label: int = -1
    caption: str | None = None  # None: read caption_path if there is one
    caption_path: Path | None = None


def read_utf8(path: Path, what: str) -> str:
    """The text of a UTF-8 file, a leading byte-order mark dropped; a one-line DataError naming the file when
    its bytes are not UTF-8 (OSError passes through)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{what} {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                        "save it with UTF-8 encoding") from None


def read_caption(path: Path) -> str:
    """A caption file's text on one line (whitespace collapsed); "" if it cannot be read, a DataError if it
    is not UTF-8."""
    try:
        return " ".join(read_utf8(path, "caption file").split())
    except OSError:
        return ""


def _with_caption_text(entry: FileEntry) -> FileEntry:
    """``entry`` with its caption file read now, so a file that cannot be decoded stops the run before training."""
    if entry.caption is not None or entry.caption_path is None:
        return entry
    return dataclasses.replace(entry, caption=read_caption(entry.caption_path), caption_path=None)


class FileImages(Dataset):
    """Images read from ``entries``; ``bad_entries`` are files already known to be bad (e.g. missing)."""

    def __init__(self, cfg: DataConfig, entries: Sequence[FileEntry], *, what: str, class_names: Sequence[str] = (),
                 bad_entries: Sequence[tuple[str, str]] = (), probe: bool = True):
        self.cfg = cfg
        self.transform = ImageTransform(cfg)
        self.class_names = list(class_names)
        self.what = what
        self.bad = BadFiles(total=len(entries) + len(bad_entries), max_fraction=cfg.max_bad_fraction,
                            what=f"files of {what}")
        for name, reason in bad_entries:
            self.bad.add(name, reason)
        good = []
        self.dims: list[tuple[int, int]] = []  # (width, height) of each good entry, when probed
        for entry in entries:
            if probe:
                try:
                    width, height, _, _ = probe_image(entry.path, cfg.max_pixels)
                    self.transform.check_size(width, height)
                except BadImage as exc:
                    self.bad.add(str(entry.path), str(exc))
                    continue
                self.dims.append((width, height))
            good.append(_with_caption_text(entry))
        if not good:
            raise DataError(f"{what} holds no readable images"
                            + (f" ({len(self.bad.bad)} bad files)" if self.bad.bad else ""))
        self.entries = good
        self.buckets: list[tuple[int, int]] = []
        self.bucket_of: list[int] | None = None  # set by use_buckets()

    def __len__(self) -> int:
        return len(self.entries)

    def item_labels(self) -> list[int]:
        return [entry.label for entry in self.entries]

    def subset(self, indices: list[int]) -> "FileImages":
        """The images at ``indices`` (``data.labels``), with their sizes and buckets."""
        part = copy.copy(self)
        part.entries = [self.entries[i] for i in indices]
        part.dims = [self.dims[i] for i in indices] if len(self.dims) == len(self.entries) else []
        part.bucket_of = [self.bucket_of[i] for i in indices] if self.bucket_of is not None else None
        return part

    def use_buckets(self, buckets: list[tuple[int, int]]) -> None:
        """Give each image the aspect-ratio bucket nearest its shape (:mod:`ldmkit.data.buckets`)."""
        from ldmkit.data.buckets import assign_buckets

        if len(self.dims) != len(self.entries):
            raise DataError("aspect-ratio buckets need the images' sizes: the folder must be read with probing")
        self.buckets, self.bucket_of = buckets, assign_buckets(self.dims, buckets)

    def caption(self, i: int) -> str:
        entry = self.entries[i]
        if entry.caption is not None:
            return entry.caption
        return read_caption(entry.caption_path) if entry.caption_path is not None else ""

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        for step in range(len(self.entries)):
            j = (i + step) % len(self.entries)
            entry = self.entries[j]
            try:
                size = self.buckets[self.bucket_of[j]] if self.bucket_of is not None else None
                pixels, placement = self.transform.placed(load_image(entry.path, self.cfg.max_pixels), size)
            except BadImage as exc:
                self.bad.add(str(entry.path), str(exc))  # raises past max_bad_fraction
                continue
            # The image's original size and crop travel along, for size conditioning.
            return {"image": pixels, "label": entry.label, "caption": self.caption(j), **placement.sample_keys()}
        raise DataError(f"{self.what} holds no readable images")
