"""Inpainting training masks drawn with each item, in the data-loader workers (paper §4.5).

:class:`MaskedItems` wraps a map-style data set: item ``index`` of epoch ``epoch`` gets a ``mask``
``[1, H, W]`` float in {0, 1} (1 = fill in) drawn by :func:`~ldmkit.data.masks.mask_from_seed`
from the seed :func:`item_mask_seed` ``(seed, epoch, index)``. A mask is therefore the same whichever worker
draws it, however many workers there are and however far the loader prefetches; a run resumed in the
middle of an epoch sees the masks the uninterrupted run would have seen, and each epoch gives an image a
new mask. An item that already has a ``mask`` keeps it.

The epoch travels with the index: the wrapper sets ``takes_epoch_keys``, for which
:func:`~ldmkit.data.loader.build_dataloader` makes its sampler yield ``(epoch, index)`` keys. Workers persist
across epochs, so an epoch attribute set in the training process after they started would not reach them.
Streamed shards keep their epoch inside the data set (their workers start afresh each pass) and draw the same
way through :class:`ItemMasks` as their ``item_hook``, indexed by the sample's place in the stored order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch.utils.data import Dataset

from ldmkit.data.masks import MaskConfig, mask_from_seed
from ldmkit.errors import DataError

#: Mixed into every mask seed, so masks never share a random stream with another use of (seed, epoch).
_MASK_STREAM = 0x6D61736B


def item_mask_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of item ``index``'s mask in ``epoch`` of a run seeded ``seed`` (an integer in [0, 2**64))."""
    if min(seed, epoch, index) < 0:
        raise DataError(f"mask seed, epoch and index must be non-negative, got {seed}, {epoch}, {index}")
    return int(np.random.SeedSequence([_MASK_STREAM, seed, epoch, index]).generate_state(1, np.uint64)[0])


class ItemMasks:
    """Adds a training ``mask`` ``[1, H, W]`` the size of its ``image`` to one item: ``masks(item, epoch, index)``.

    Picklable, so the data-loader workers draw the masks; used by :class:`MaskedItems` and, for streamed shards,
    as :attr:`~ldmkit.data.shards.ShardDataset.item_hook`. An item that already has a ``mask`` keeps it.
    """

    def __init__(self, config: MaskConfig = MaskConfig(), *, seed: int = 0):
        self.config = config
        self.seed = seed

    def __call__(self, item: dict[str, Any], epoch: int, index: int) -> dict[str, Any]:
        if item.get("mask") is not None:  # a data set that supplies masks keeps its own
            return item
        image = item.get("image")
        if image is None:
            raise DataError(f"item {index} has no 'image' to draw an inpainting mask for; inpainting trains on "
                            "images (set latents: null)")
        height, width = image.shape[-2:]
        mask = mask_from_seed(height, width, self.config, item_mask_seed(self.seed, epoch, index))  # [H, W]
        return {**item, "mask": mask[None]}  # [1, H, W]


class MaskedItems(Dataset):
    """``dataset``'s items with a training ``mask`` ``[1, H, W]`` the size of their ``image``.

    Keys are ``(epoch, index)`` pairs (from a sampler with ``epoch_keys``) or plain indices (epoch 0).
    """

    #: Tells :func:`~ldmkit.data.loader.build_dataloader` to pass ``(epoch, index)`` keys.
    takes_epoch_keys = True

    def __init__(self, dataset: Dataset, config: MaskConfig = MaskConfig(), *, seed: int = 0):
        self.dataset = dataset
        self.masks = ItemMasks(config, seed=seed)

    @property
    def config(self) -> MaskConfig:
        return self.masks.config

    @property
    def seed(self) -> int:
        return self.masks.seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        return self.masks(dict(self.dataset[index]), epoch, index)


__all__ = ["ItemMasks", "MaskedItems", "item_mask_seed"]
