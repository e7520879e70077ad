"""A sampler for map-style data sets that can stop in the middle of an epoch and resume exactly.

Epoch ``e``'s order is a permutation drawn from ``(seed, e)`` (or ``0..n-1`` without shuffling), made a
multiple of ``world_size`` long (cut with ``drop_last``, else padded by repeating its start, as
``torch.utils.data.DistributedSampler`` does) and dealt to the ranks: rank ``r`` takes positions
``r, r + world_size, ...``. The position within the epoch is ``offset``, counted in this rank's samples.

Position protocol (shared with :class:`~ldmkit.data.shards.ShardDataset`):

- ``set_epoch(e)``: moves to epoch ``e`` at offset 0 (no change when already in epoch ``e``, so a
  loop that calls it after :meth:`load_state_dict` keeps the restored offset);
- ``state_dict()`` -> ``{"epoch", "offset"}``; ``load_state_dict(state)``;
- ``advance(n)``: ``n`` more samples were consumed; ``finish_epoch()``: the pass ended, go to the next
  epoch. :class:`~ldmkit.data.loader.ResumableDataLoader` calls these as batches reach the training loop
  (a sampler runs ahead of the loop by the prefetched batches, so it cannot count by itself).

Iterating yields this rank's indices from ``offset`` to the end of the epoch; with ``epoch_keys=True`` it
yields ``(epoch, index)`` pairs instead, for data sets whose items depend on the epoch (e.g.
:class:`~ldmkit.data.masked.MaskedItems`): the epoch travels with each index to the data-loader workers,
which persist across epochs and so cannot learn it any other way.
"""

from __future__ import annotations

from typing import Iterator, Mapping

import numpy as np
from torch.utils.data import Sampler

from ldmkit.errors import DataError


#: What the sampler yields: an index, or ``(epoch, index)`` with ``epoch_keys``.
Key = int | tuple[int, int]


class EpochSampler(Sampler[Key]):
    """The position protocol and iteration of a sampler whose subclass says which indices an epoch holds
    (:meth:`epoch_indices`, an int64 array of this rank's indices) and how many (``__len__``)."""

    epoch: int
    offset: int
    epoch_keys: bool

    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Key]:
        indices = self.epoch_indices()[self.offset:]
        if self.epoch_keys:  # the epoch is read now, when the pass starts, not when a worker asks
            epoch = self.epoch
            return ((epoch, int(i)) for i in indices)
        return (int(i) for i in indices)  # Python ints, one at a time, as data sets expect

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.offset = epoch, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def check_offset(self, offset: int) -> None:
        """A one-line DataError when a restored ``offset`` cannot belong to this sampler."""
        if not 0 <= offset <= len(self):
            raise DataError(f"sampler offset {offset} is outside 0..{len(self)}; the data set changed size since "
                            "the checkpoint was written")

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        epoch, offset = int(state["epoch"]), int(state["offset"])
        self.check_offset(offset)
        self.epoch, self.offset = epoch, offset

    def advance(self, n: int) -> None:
        self.offset = min(self.offset + n, len(self))

    def finish_epoch(self) -> None:
        self.epoch, self.offset = self.epoch + 1, 0


class ResumableSampler(EpochSampler):
    def __init__(self, num_samples: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool = False, epoch_keys: bool = False):
        if num_samples < 1:
            raise DataError("the data set is empty: nothing to sample")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside 0..{world_size - 1}")
        if drop_last and num_samples < world_size:
            raise DataError(f"{num_samples} samples cannot be shared by {world_size} ranks with drop_last")
        self.num_samples, self.shuffle, self.seed = num_samples, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch_keys = epoch_keys
        self.epoch, self.offset = 0, 0

    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        """All of this rank's indices of ``epoch`` (default: the current one), from its start: an int64 array, not
        a list (8 bytes an item instead of ~36, which matters for caches of millions of latents)."""
        epoch = self.epoch if epoch is None else epoch
        n = self.num_samples
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
        else:
            order = np.arange(n)
        if self.drop_last:
            order = order[: n - n % self.world_size]
        elif n % self.world_size:
            pad = self.world_size - n % self.world_size
            order = np.concatenate([order, np.resize(order, pad)])
        return np.ascontiguousarray(order[self.rank:: self.world_size], dtype=np.int64)

    def __len__(self) -> int:
        """Samples of this rank in a whole epoch."""
        n, w = self.num_samples, self.world_size
        return n // w if self.drop_last else -(-n // w)
