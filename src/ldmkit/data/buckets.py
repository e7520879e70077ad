"""Aspect-ratio buckets (NovelAI 2022; kohya sd-scripts ``--enable_bucket``): train on images of mixed shapes
without distorting or cropping them to squares.

The buckets are the (height, width) pairs, multiples of ``step``, between ``min_side`` and ``max_side``, whose
area is at most ``resolution²``, the widest for each height. Each image goes to the bucket nearest its aspect
ratio (in log ratio) and is resized to cover it and centre-cropped (little is lost: the aspect ratios are
close). :class:`BucketSampler` orders an epoch so that every batch holds one bucket: each bucket's images are
shuffled and cut into batches, the batches shuffled, and dealt to the ranks in turn, all from (seed, epoch), so
an epoch's order is the same after a resume (position: samples consumed, as for the plain sampler).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ldmkit.config import option
from ldmkit.data.sampler import EpochSampler
from ldmkit.errors import DataError


@dataclass(frozen=True)
class BucketConfig:
    """Aspect-ratio buckets of an image folder's training split (off by default: square crops)."""

    enabled: bool = option(False, help="group images of mixed shapes into aspect-ratio buckets of about "
                                       "resolution² pixels instead of square crops (image folders, training split)")
    step: int = option(64, help="bucket sides are multiples of this (a multiple of the autoencoder's f times the "
                                "UNet's downsampling)", min=1)
    min_side: int = option(256, help="shortest bucket side", min=1)
    max_side: int = option(1024, help="longest bucket side", min=1)


def make_buckets(resolution: int, config: BucketConfig) -> list[tuple[int, int]]:
    """Bucket (height, width) pairs, sorted by aspect ratio h/w (tallest first)."""
    step, area = config.step, resolution * resolution
    low = max(step, math.ceil(config.min_side / step) * step)
    high = config.max_side // step * step
    if low > high or low * low > area:
        raise DataError(f"no aspect-ratio bucket fits: sides {config.min_side}..{config.max_side} in steps of {step} "
                        f"with at most {resolution}² pixels; lower buckets.min_side or raise data.resolution")
    buckets = set()
    for side in range(low, high + 1, step):
        other = min(high, area // side // step * step)
        if other >= low:
            buckets.add((side, other))
            buckets.add((other, side))
    return sorted(buckets, key=lambda hw: hw[0] / hw[1], reverse=True)


def assign_buckets(sizes: list[tuple[int, int]], buckets: list[tuple[int, int]]) -> list[int]:
    """For each image (width, height), the index of the bucket nearest its aspect ratio in log ratio."""
    ratios = np.log([h / w for h, w in buckets])
    return [int(np.abs(ratios - math.log(height / width)).argmin()) for width, height in sizes]


class BucketSampler(EpochSampler):
    """Indices of this rank's batches of an epoch, each batch from one bucket (``batch_size`` items)."""

    def __init__(self, bucket_of: list[int], batch_size: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1, epoch_keys: bool = False):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"bucket sampler: batch size {batch_size}, rank {rank} of {world_size}")
        self.bucket_of, self.batch_size = np.asarray(bucket_of, dtype=np.int64), batch_size
        self.shuffle, self.seed, self.rank, self.world_size, self.epoch_keys = shuffle, seed, rank, world_size, epoch_keys
        self.epoch, self.offset = 0, 0
        # Whole batches per bucket, the same every epoch: so is this rank's count, computed once.
        counts = np.bincount(self.bucket_of)
        batches = int((counts // batch_size).sum()) // world_size
        self._length = batches * batch_size
        if self._length == 0:
            raise DataError(f"no bucket holds {batch_size * world_size} images (a batch on every rank): lower "
                            "train.batch_size or widen the buckets (buckets.step)")

    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch, 0x6275636B])
        batches = []
        for bucket in np.unique(self.bucket_of):
            members = np.flatnonzero(self.bucket_of == bucket)
            if self.shuffle:
                members = rng.permutation(members)
            full = len(members) // self.batch_size * self.batch_size  # the rest waits for another epoch's draw
            batches += list(members[:full].reshape(-1, self.batch_size))
        if self.shuffle and batches:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        usable = len(batches) // self.world_size * self.world_size
        mine = batches[self.rank:usable:self.world_size]
        return np.concatenate(mine) if mine else np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return self._length

    def check_offset(self, offset: int) -> None:
        if offset % self.batch_size or not 0 <= offset <= len(self):
            raise DataError(f"bucket sampler offset {offset} does not fall on a batch of {self.batch_size} in "
                            f"0..{len(self)}; the data set or batch size changed since the checkpoint")


def bucketed(dataset) -> tuple[list[int], list[tuple[int, int]]] | None:
    """(bucket of each item, buckets) of a data set, or of the one a wrapper (masks, captions) holds."""
    while dataset is not None:
        if getattr(dataset, "bucket_of", None) is not None:
            return dataset.bucket_of, dataset.buckets
        dataset = getattr(dataset, "dataset", None)
    return None


__all__ = ["BucketConfig", "BucketSampler", "assign_buckets", "bucketed", "make_buckets"]
