"""An endless stream of batches over epochs, resumable at the exact batch.

Position bookkeeping (epoch, samples consumed) lives in :func:`ldmkit.data.build_dataloader`'s
position object; this only turns its epochs into one stream and checks that a batch fits.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import IterableDataset

from ldmkit.data import build_dataloader
from ldmkit.errors import DataError
from ldmkit.runtime import world_size


class BatchStream:
    def __init__(self, dataset: Any, batch_size: int, *, seed: int, num_workers: int = 0, shuffle: bool = True):
        if not isinstance(dataset, IterableDataset) and len(dataset) // world_size() < batch_size:
            raise DataError(
                f"the data set has {len(dataset)} samples, fewer than one batch of {batch_size} per process; "
                "lower train.batch_size or add data"
            )
        self.batch_size = batch_size
        self.loader, self.position = build_dataloader(None, dataset, batch_size, seed=seed, num_workers=num_workers,
                                                      shuffle=shuffle, drop_last=True)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            # A pass resumed at (or within the dropped tail of) the end of an epoch rightly yields nothing;
            # only a pass started at the beginning of an epoch must produce a batch.
            from_start = self.position.state_dict()["offset"] == 0
            produced = 0
            for batch in self.loader:
                produced += 1
                yield batch
            if produced == 0 and from_start:
                raise DataError("the data set produced no batch in a whole epoch; check the data source")

    @property
    def batches_consumed(self) -> int:
        """Batches of the current epoch already handed out (for messages that name a batch)."""
        return self.position.state_dict()["offset"] // self.batch_size

    def state_dict(self) -> dict[str, int]:
        return self.position.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position.load_state_dict(state)
