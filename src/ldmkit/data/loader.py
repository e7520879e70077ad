"""Data sets by name, and data loaders whose position survives a restart.

:func:`build_dataloader` returns ``(loader, position)``: the loader is a
:class:`ResumableDataLoader` (a ``torch.utils.data.DataLoader``) that reports each batch the training
loop receives to ``position`` — a :class:`~ldmkit.data.sampler.ResumableSampler` for map-style data sets,
the :class:`~ldmkit.data.shards.ShardDataset` itself for shards. Save ``position.state_dict()`` with a
checkpoint and call ``position.load_state_dict(state)`` before iterating again: the next pass yields
exactly the batches the interrupted one had not yet delivered. For map-style data sets the sampler runs in
the main process, so workers persist across passes (starting a dozen workers for every pass of a small
data set cost more time than training on it), and with workers the loader is a
:class:`PrefetchingDataLoader`, whose workers prepare the next epoch's batches before this one ends; streaming
shards keep their position inside the workers, so those start afresh for each pass and see the restored
position. A map-style data set with a true
``takes_epoch_keys`` attribute receives ``(epoch, index)`` keys instead of indices.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Iterator, Protocol

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ldmkit import runtime
from ldmkit.config import Registry
from ldmkit.data.buckets import BucketSampler, bucketed
from ldmkit.data.config import DataConfig
from ldmkit.data.sampler import EpochSampler, Key, ResumableSampler
from ldmkit.data.splits import check_split

SOURCES: Registry[Callable[[DataConfig, str], Dataset]] = Registry("data source")


# Each source is built by a class or function (cfg, split) -> Dataset, imported on first use so that
# importing ldmkit.data stays light.
_SOURCE_BUILDERS = {
    "synthetic": "ldmkit.data.synthetic:SyntheticShapes",
    "folder": "ldmkit.data.folder:folder_dataset",
    "shards": "ldmkit.data.shards:ShardDataset",
    "fashion_mnist": "ldmkit.data.fashion_mnist:FashionMNIST",
    "emoji": "ldmkit.data.emoji:emoji_dataset",
}


def _imported_on_use(target: str) -> Callable[[DataConfig, str], Dataset]:
    module, name = target.split(":")

    def build(cfg: DataConfig, split: str) -> Dataset:
        return getattr(importlib.import_module(module), name)(cfg, split)

    return build


for _name, _target in _SOURCE_BUILDERS.items():
    SOURCES.register(_name)(_imported_on_use(_target))


def build_dataset(cfg: DataConfig, split: str = "train") -> Dataset:
    """The data set of ``cfg.source`` for ``split`` (train, val, test or all); samples as in
    :mod:`ldmkit.data.config`. Raises :class:`~ldmkit.errors.DataError` (missing path, empty set, bad
    format) or :class:`~ldmkit.errors.AssetMissingError` (data set not fetched)."""
    from ldmkit.data.label_subset import keep_labels

    dataset = SOURCES.get(cfg.source)(cfg, check_split(split))
    return keep_labels(dataset, cfg.labels, cfg.source, split)


def dataset_captions(dataset: Any) -> list[str]:
    """Every caption of a data set, without decoding images where the data set can say them directly."""
    captions = getattr(dataset, "captions", None)
    if captions is not None:
        return list(captions() if callable(captions) else captions)
    if callable(getattr(dataset, "caption", None)):  # image files: captions come from names and side files
        return [dataset.caption(i) for i in range(len(dataset))]
    return [dataset[i]["caption"] for i in range(len(dataset))]


def class_names(cfg: DataConfig) -> list[str]:
    """Names of the labels (index = label); empty when the source has no labels."""
    if cfg.source == "synthetic":
        from ldmkit.data.synthetic import class_names as synthetic_names

        return synthetic_names(cfg.synthetic)
    if cfg.source == "fashion_mnist":
        from ldmkit.data.fashion_mnist import CLASS_NAMES

        return list(CLASS_NAMES)
    return list(getattr(build_dataset(cfg, "all"), "class_names", []))


def num_classes(cfg: DataConfig) -> int:
    """How many labels the source has (0 when it has none)."""
    return len(class_names(cfg))


class Position(Protocol):
    epoch: int
    offset: int

    def set_epoch(self, epoch: int) -> None: ...
    def state_dict(self) -> dict[str, int]: ...
    def load_state_dict(self, state: dict[str, int]) -> None: ...
    def advance(self, n: int) -> None: ...
    def finish_epoch(self) -> None: ...


def _batch_len(batch: Any) -> int:
    if isinstance(batch, dict):
        batch = next(iter(batch.values()))
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    return len(batch)


class ResumableDataLoader(DataLoader):
    """A DataLoader that tells ``position`` how many samples reached the caller, and when a pass ended."""

    def __init__(self, dataset: Dataset, *, position: Position, **kwargs: Any):
        super().__init__(dataset, **kwargs)
        self.position = position

    def set_epoch(self, epoch: int) -> None:
        self.position.set_epoch(epoch)

    def state_dict(self) -> dict[str, int]:
        return self.position.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position.load_state_dict(state)

    def __iter__(self):
        for batch in super().__iter__():
            self.position.advance(_batch_len(batch))
            yield batch
        self.position.finish_epoch()


class EpochBatches:
    """Batches of a sampler's keys, epoch after epoch without end, from a given (epoch, offset): each epoch cut
    into batches on its own (its last, short batch dropped with ``drop_last``), as a DataLoader would batch it."""

    def __init__(self, sampler: EpochSampler, batch_size: int, drop_last: bool, start: tuple[int, int]):
        self.sampler, self.batch_size, self.drop_last, self.start = sampler, batch_size, drop_last, start

    def __iter__(self) -> Iterator[list[Key]]:
        epoch, offset = self.start
        while True:
            indices = self.sampler.epoch_indices(epoch)[offset:]  # int64 array; a batch at a time becomes ints
            end = len(indices) - len(indices) % self.batch_size if self.drop_last else len(indices)
            for lo in range(0, end, self.batch_size):
                batch = indices[lo:lo + self.batch_size].tolist()
                yield [(epoch, i) for i in batch] if self.sampler.epoch_keys else batch
            epoch, offset = epoch + 1, 0


class PrefetchingDataLoader(ResumableDataLoader):
    """A ResumableDataLoader whose workers prepare batches across the end of an epoch.

    A DataLoader prepares batches ahead only within one pass: every epoch starts with its workers idle, and an
    epoch of one or two batches (a folder of a few dozen images) leaves one worker building every batch while
    the GPU waits (an H200 trained a 49-photo folder at 2.9 steps/s, the same networks on 3,374 emoji at 9.8:
    docs/results/fit.md). Here one worker iterator runs on :class:`EpochBatches` for as long as the position
    moves only by the batches it delivers; the batches, their order and the epochs are exactly those of the
    one-pass-at-a-time loader. A position restored or moved from outside starts a fresh iterator there.
    """

    def __init__(self, dataset: Dataset, *, position: EpochSampler, batch_size: int, drop_last: bool,
                 **kwargs: Any):
        self._batches = EpochBatches(position, batch_size, drop_last, (position.epoch, position.offset))
        self._stream: Iterator | None = None
        self._stream_at: tuple[int, int] | None = None  # where the stream's next batch starts
        super().__init__(dataset, position=position, batch_sampler=self._batches, **kwargs)

    def batches_left(self) -> int:
        """Batches the current epoch still holds from the position."""
        left, size = len(self.position) - self.position.offset, self._batches.batch_size
        return left // size if self._batches.drop_last else -(-left // size)

    def __iter__(self):
        position = self.position
        if self._stream is None or self._stream_at != (position.epoch, position.offset):
            self._batches.start = (position.epoch, position.offset)  # read when the iterator starts
            self._stream = DataLoader.__iter__(self)
        for _ in range(self.batches_left()):
            batch = next(self._stream)
            position.advance(_batch_len(batch))
            self._stream_at = (position.epoch, position.offset)
            yield batch
        position.finish_epoch()
        self._stream_at = (position.epoch, position.offset)


def build_dataloader(cfg: DataConfig, dataset: Dataset, batch_size: int, *, seed: int = 0, rank: int | None = None,
                     world_size: int | None = None, num_workers: int = 0, shuffle: bool = True,
                     drop_last: bool = True, pin_memory: bool = False) -> tuple[ResumableDataLoader, Position]:
    """A loader over this rank's share of ``dataset`` and the object that reports/restores its position.

    ``rank``/``world_size`` default to the process's (``RANK``/``WORLD_SIZE``). ``shuffle`` draws each epoch's
    order from ``(seed, epoch)``; ``drop_last`` cuts the epoch to a multiple of ``world_size`` and drops a last
    incomplete batch. Random transforms draw from a generator seeded by ``(seed, rank)``. ``cfg`` is the
    data set's config (nothing in it changes the loader today; trainers pass it for future options).
    """
    rank = runtime.rank() if rank is None else rank
    world_size = runtime.world_size() if world_size is None else world_size
    generator = torch.Generator().manual_seed(seed * 1000 + rank)
    common = dict(batch_size=batch_size, num_workers=num_workers, drop_last=drop_last, pin_memory=pin_memory,
                  generator=generator, persistent_workers=False)
    if isinstance(dataset, IterableDataset):
        configure = getattr(dataset, "configure", None)
        if configure is None:
            raise TypeError(f"{type(dataset).__name__} cannot be split over ranks or resumed")
        configure(shuffle=shuffle, seed=seed, rank=rank, world_size=world_size, block=batch_size)
        return ResumableDataLoader(dataset, position=dataset, **common), dataset
    # A data set whose items depend on the epoch (``takes_epoch_keys``, e.g. ldmkit.data.masked.MaskedItems)
    # gets (epoch, index) keys: persistent workers could not learn the epoch otherwise.
    epoch_keys = bool(getattr(dataset, "takes_epoch_keys", False))
    buckets = bucketed(dataset)
    if buckets is not None:  # every batch from one aspect-ratio bucket (ldmkit.data.buckets)
        sampler = BucketSampler(buckets[0], batch_size, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size,
                                epoch_keys=epoch_keys)
        common["persistent_workers"] = num_workers > 0
        return ResumableDataLoader(dataset, position=sampler, sampler=sampler, **common), sampler
    sampler = ResumableSampler(len(dataset), shuffle=shuffle, seed=seed, rank=rank, world_size=world_size,
                               drop_last=drop_last, epoch_keys=bool(getattr(dataset, "takes_epoch_keys", False)))
    if num_workers > 0:  # one worker iterator for the whole run: batches prepared across epoch ends
        kept = {k: v for k, v in common.items() if k not in ("batch_size", "drop_last")}
        return PrefetchingDataLoader(dataset, position=sampler, batch_size=batch_size, drop_last=drop_last,
                                     **kept), sampler
    return ResumableDataLoader(dataset, position=sampler, sampler=sampler, **common), sampler
