"""Fashion-MNIST (Xiao, Rasul, Vollgraf 2017) read from its IDX files.

Directory (``path``; else ``$LDMKIT_HOME/fashion-mnist``; else ``/usr/share/datasets/fashion-mnist``, where
Debian's ``dataset-fashion-mnist`` package puts it)::

    train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz   (60,000 images: split train)
    t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz    (10,000 images: split val / test)

(uncompressed files without ``.gz`` work too). Images are 28x28 gray, white on black: the presets set
``background: black`` and ``pad: 2`` to reach 32x32. Label = class index; caption = the class name in
lower case ("ankle boot").
"""

from __future__ import annotations

import copy
import gzip
import struct
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ldmkit.data.config import DataConfig
from ldmkit.data.paths import asset_dir, given_path
from ldmkit.data.splits import check_split
from ldmkit.data.transforms import ImageTransform
from ldmkit.errors import DataError

CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
_IDX_TYPES = {0x08: np.uint8}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array of its declared shape."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path} cannot be read: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header])
    count = int(np.prod(shape))
    if len(data) - header != count:
        raise DataError(f"{path} is truncated or damaged: header says {count} values, file holds {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def fashion_mnist_root(cfg: DataConfig) -> Path:
    if cfg.path is not None:
        return given_path(cfg.path, "Fashion-MNIST")
    return asset_dir("fashion-mnist", [SYSTEM_DIR])


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root} has no {stem}.gz; it does not look like a Fashion-MNIST directory")


def load_split(root: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [N, 28, 28], int64 labels [N]) of ``train`` or ``t10k``."""
    images = read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"Fashion-MNIST files in {root} do not fit together: images {images.shape}, "
                        f"labels {labels.shape}")
    if labels.size and labels.max() >= len(CLASS_NAMES):
        raise DataError(f"Fashion-MNIST labels in {root} go up to {labels.max()}, expected 0..9")
    return images, labels.astype(np.int64)


class FashionMNIST(Dataset):
    """Split ``train``: the 60k file; ``val``/``test``: t10k; ``all``: both."""

    class_names = list(CLASS_NAMES)

    def __init__(self, cfg: DataConfig, split: str = "train"):
        check_split(split)
        root = fashion_mnist_root(cfg)
        prefixes = {"train": ["train"], "val": ["t10k"], "test": ["t10k"], "all": ["train", "t10k"]}[split]
        parts = [load_split(root, p) for p in prefixes]
        self.images = np.concatenate([p[0] for p in parts])  # [N, 28, 28] uint8
        self.labels = np.concatenate([p[1] for p in parts])  # [N]
        if not len(self.images):
            raise DataError(f"Fashion-MNIST split '{split}' in {root} is empty")
        self.transform = ImageTransform(cfg)

    def __len__(self) -> int:
        return len(self.images)

    def item_labels(self) -> np.ndarray:
        return self.labels

    def subset(self, indices: list[int]) -> "FashionMNIST":
        """The items at ``indices`` (``data.labels``)."""
        part = copy.copy(self)
        part.images, part.labels = self.images[indices], self.labels[indices]
        return part

    def __getitem__(self, i: int) -> dict:
        label = int(self.labels[i])
        return {"image": self.transform(Image.fromarray(self.images[i], "L")), "label": label,
                "caption": CLASS_NAMES[label].lower()}
