"""WebDataset-style tar shards, streamed (an ``IterableDataset``).

A shard is a plain ``.tar`` file. Members whose names share a key (the path up to the first "." of the
file name) form one sample: ``0001.png`` + ``0001.txt`` + ``0001.cls``. Recognised extensions:

- image: ``jpg``, ``jpeg``, ``png``, ``webp``, ``bmp``, ``gif`` (a key without one is ignored);
- caption: ``txt``, ``caption`` or ``text``;
- label: ``cls`` or ``label`` (an integer as text);
- ``json``: an object whose ``caption``/``text`` and ``label``/``cls`` are used when the files above are absent.

``path`` is a directory (every ``*.tar`` in it), a glob (``data/train-*.tar``) or one tar file.

Order and splitting: the epoch's global order is a pure function of ``(seed, epoch)`` — shards in a
shuffled order, samples shuffled within each shard (or the stored order with ``shuffle=False``). Rank
``r`` of ``world_size`` takes every ``world_size``-th sample from position ``r`` (the order is first cut
to a multiple of ``world_size`` so every rank gets as many). Within a rank, data-loader worker ``w`` of
``W`` takes the blocks of ``block`` consecutive samples numbered ``w, w+W, ...``; with ``block`` = the batch
size, the data loader (which takes one batch from each worker in turn) yields exactly the rank's order.
Only headers are read for samples that belong to other ranks or workers.

Resuming: :meth:`ShardDataset.load_state_dict` ``{"epoch", "offset"}`` makes the next pass start at the
rank's ``offset``-th sample of that epoch.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ldmkit.data.config import DataConfig
from ldmkit.data.images import BadFiles, BadImage, load_image
from ldmkit.data.splits import check_split, stream_in_split
from ldmkit.data.transforms import ImageTransform
from ldmkit.errors import DataError

log = logging.getLogger("ldmkit.data")

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif")
CAPTION_EXTS = ("txt", "caption", "text")
LABEL_EXTS = ("cls", "label")


def list_shards(path: str | Path) -> list[Path]:
    """The tar files named by a directory, a glob or a single file, sorted."""
    text = str(path)
    p = Path(text).expanduser()
    if p.is_dir():
        shards = sorted(p.glob("*.tar"))
    elif p.is_file():
        shards = [p]
    elif any(c in text for c in "*?["):
        shards = sorted(Path(s) for s in glob.glob(str(p)))
    else:
        raise DataError(f"shard path {p} does not exist; check the `path` setting")
    if not shards:
        raise DataError(f"no .tar shards at {p}")
    return shards


def split_key(member_name: str) -> tuple[str, str]:
    """``"dir/0001.seg.png"`` -> (``"dir/0001"``, ``"seg.png"``)."""
    head, _, base = member_name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower() if dot else ""


@dataclass(frozen=True)
class _Member:
    offset: int  # byte offset of the member's data in the tar file
    size: int


def index_shard(path: Path) -> list[tuple[str, dict[str, _Member]]]:
    """(key, {extension: member}) of every key in the shard, in stored order (headers only)."""
    samples: dict[str, dict[str, _Member]] = {}
    with tarfile.open(path, "r:") as tar:
        try:
            for info in tar:
                if info.isfile():
                    key, ext = split_key(info.name)
                    samples.setdefault(key, {})[ext] = _Member(info.offset_data, info.size)
        except (tarfile.ReadError, EOFError, OSError) as exc:
            log.warning("shard %s is damaged after %d samples (%s); using those", path, len(samples), exc)
    return list(samples.items())


def write_shards(items: Iterable[tuple[str, Mapping[str, bytes]]], out_dir: str | Path, *,
                 per_shard: int = 1000, prefix: str = "shard") -> list[Path]:
    """Write ``(key, {extension: bytes})`` samples into ``out_dir/prefix-000000.tar``, ... ; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    tar = None
    count = 0
    try:
        for key, files in items:
            if tar is None or count == per_shard:
                if tar is not None:
                    tar.close()
                paths.append(out / f"{prefix}-{len(paths):06d}.tar")
                tar = tarfile.open(paths[-1], "w")
                count = 0
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            count += 1
    finally:
        if tar is not None:
            tar.close()
    return paths


@dataclass
class RawSample:
    name: str  # "shard.tar:key.ext"
    image: Image.Image | BadImage  # the decoded image, or why it could not be decoded
    label: int
    caption: str


def _text(data: bytes) -> str:
    return " ".join(data.decode("utf-8", errors="replace").split())


class ShardDataset(IterableDataset):
    """Samples of tar shards; see the module docstring for order, splitting and resuming."""

    def __init__(self, cfg: DataConfig, split: str = "train", *, shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1, block: int = 1):
        check_split(split)
        if cfg.path is None:
            raise DataError("source=shards needs path=DIR|GLOB|FILE.tar")
        self.cfg = cfg
        self.shards = list_shards(cfg.path)
        self.transform = ImageTransform(cfg)
        self.class_names: list[str] = []
        self.index: list[list[tuple[str, dict[str, _Member]]]] = []
        broken = []
        for shard in self.shards:
            try:
                entries = index_shard(shard)
            except (tarfile.TarError, OSError) as exc:
                broken.append((str(shard), f"not a readable tar file ({exc})"))
                entries = []
            with_image = [(k, m) for k, m in entries if any(e in m for e in IMAGE_EXTS)
                          and stream_in_split(k, split, cfg.val_fraction, cfg.split_seed)]
            self.index.append(with_image)
        total = sum(len(s) for s in self.index)
        self.bad = BadFiles(total=total + len(broken), max_fraction=cfg.max_bad_fraction, what="shard samples")
        for name, reason in broken:
            self.bad.add(name, reason)
        if total == 0:
            raise DataError(f"shards at {cfg.path} hold no images for split '{split}'")
        self.configure(shuffle=shuffle, seed=seed, rank=rank, world_size=world_size, block=block)
        self.epoch, self.offset = 0, 0
        # first stored-order index of each shard: a sample's index whatever the epoch's order
        self._starts = np.cumsum([0] + [len(entries) for entries in self.index[:-1]]).tolist()
        #: ``hook(item, epoch, index)`` -> item, run where the item is read (in the data-loader workers), e.g.
        #: :class:`~ldmkit.data.masked.ItemMasks`; must be picklable.
        self.item_hook: Callable[[dict, int, int], dict] | None = None

    def configure(self, *, shuffle: bool, seed: int, rank: int, world_size: int, block: int = 1) -> None:
        """Set order and rank (done by :func:`~ldmkit.data.loader.build_dataloader`)."""
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside 0..{world_size - 1}")
        self.shuffle, self.seed, self.rank, self.world_size, self.block = shuffle, seed, rank, world_size, max(block, 1)

    # -- position (the same protocol as ResumableSampler) ---------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.offset = epoch, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])

    def advance(self, n: int) -> None:
        self.offset += n

    def finish_epoch(self) -> None:
        self.epoch, self.offset = self.epoch + 1, 0

    # -- order ----------------------------------------------------------------------------------------------
    def epoch_order(self, epoch: int | None = None) -> list[tuple[int, int]]:
        """(shard, sample) positions of the whole epoch, before the split over ranks."""
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch])
        shard_order = rng.permutation(len(self.index)) if self.shuffle else range(len(self.index))
        order = []
        for s in shard_order:
            n = len(self.index[s])
            inner = rng.permutation(n) if self.shuffle else range(n)
            order.extend((int(s), int(i)) for i in inner)
        return order[: len(order) - len(order) % self.world_size] if len(order) >= self.world_size else order

    def rank_order(self, epoch: int | None = None) -> list[tuple[int, int]]:
        return self.epoch_order(epoch)[self.rank:: self.world_size]

    def __len__(self) -> int:
        total = sum(len(s) for s in self.index)
        return (total - total % self.world_size) // self.world_size if total >= self.world_size else \
            int(self.rank < total)

    def keys(self, epoch: int | None = None) -> list[str]:
        """Sample keys of this rank's order (for inspection and tests)."""
        return [self.index[s][i][0] for s, i in self.rank_order(epoch)]

    # -- reading --------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        todo = self.rank_order()[self.offset:]
        handles: dict[int, object] = {}
        try:
            for q, (s, i) in enumerate(todo):
                if (q // self.block) % workers != worker:
                    continue
                sample = self._read(s, i, handles)
                if sample is not None:
                    yield sample
        finally:
            for f in handles.values():
                f.close()

    def _read(self, s: int, i: int, handles: dict) -> dict | None:
        raw = self.read_raw(s, i, handles)
        if isinstance(raw.image, BadImage):
            self.bad.add(raw.name, str(raw.image))
            return None
        try:
            pixels = self.transform(raw.image)
        except BadImage as exc:  # e.g. too long and thin to resize
            self.bad.add(raw.name, str(exc))
            return None
        item = {"image": pixels, "label": raw.label, "caption": raw.caption}
        return item if self.item_hook is None else self.item_hook(item, self.epoch, self._starts[s] + i)

    def read_raw(self, s: int, i: int, handles: dict) -> RawSample:
        """Sample ``i`` of shard ``s`` before transforms; ``handles`` keeps the open shard file."""
        key, members = self.index[s][i]
        if s not in handles:
            for f in handles.values():
                f.close()
            handles.clear()
            handles[s] = open(self.shards[s], "rb")
        f = handles[s]

        def data(ext: str) -> bytes:
            f.seek(members[ext].offset)
            return f.read(members[ext].size)

        name = f"{self.shards[s].name}:{key}"
        image_ext = next(e for e in IMAGE_EXTS if e in members)
        try:
            image: Image.Image | BadImage = load_image(data(image_ext), self.cfg.max_pixels)
        except BadImage as exc:
            image = exc
        meta = {}
        if "json" in members:
            try:
                meta = json.loads(data("json"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                log.warning("%s.json is not JSON; ignoring it", name)
            meta = meta if isinstance(meta, dict) else {}
        caption = next((_text(data(e)) for e in CAPTION_EXTS if e in members), None)
        if caption is None:
            caption = " ".join(str(meta.get("caption", meta.get("text", ""))).split())
        label = -1
        raw = next((_text(data(e)) for e in LABEL_EXTS if e in members), meta.get("label", meta.get("cls")))
        if raw is not None:
            try:
                label = int(raw)
            except (TypeError, ValueError):
                log.warning("%s has label %r, not an integer; using -1", name, raw)
        return RawSample(f"{name}.{image_ext}", image, label, caption)


class StoredOrder(Dataset):
    """The samples of a :class:`ShardDataset` by position in stored order, as a map-style data set.

    For work that reads only some positions (``ldm encode`` resuming reads only those of unfinished latent
    shards). A sample that cannot be decoded is ``None`` (and counted as bad), not replaced by another.
    """

    def __init__(self, shards: ShardDataset):
        self.shards = shards
        self.positions = [(s, i) for s, entries in enumerate(shards.index) for i in range(len(entries))]
        self._handles: dict[int, object] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict:
        return {"shards": self.shards, "positions": self.positions}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _handles={}, _pid=os.getpid())

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, q: int) -> dict | None:
        if self._pid != os.getpid():  # a forked worker must not share the parent's file position
            self._handles, self._pid = {}, os.getpid()
        s, i = self.positions[q]
        return self.shards._read(s, i, self._handles)
