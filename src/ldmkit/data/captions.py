"""Caption options of text-conditioned training, as practitioners know them from kohya sd-scripts
(``--shuffle_caption``, ``--keep_tokens``, ``--caption_tag_dropout_rate``) and OneTrainer:

- several captions per image, one per line: each epoch trains on one of them;
- a caption is a list of tags joined by ``separator``: the first ``keep_tags`` stay first, the rest are
  shuffled (``shuffle_tags``) and each dropped with probability ``tag_dropout``.

Every choice is drawn from a seed of (train.seed, epoch, item index), in the data-loader workers, so a caption
is the same whichever worker reads it and a resumed run sees what the uninterrupted one saw, as with inpainting
masks (:mod:`ldmkit.data.masked`). With the defaults a caption passes through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from ldmkit.config import option

#: Mixed into every caption seed, so captions never share a random stream with masks or another use.
_CAPTION_STREAM = 0x63617074


@dataclass(frozen=True)
class CaptionConfig:
    """How a training caption is varied per epoch (defaults: not at all)."""

    separator: str = option(",", help="what separates the tags of a caption")
    shuffle_tags: bool = option(False, help="shuffle the tags after the first keep_tags each time a caption is read")
    keep_tags: int = option(0, help="tags at the start that stay where they are and are never dropped", min=0)
    tag_dropout: float = option(0.0, help="probability of dropping each other tag", min=0.0, max=1.0)
    pick_line: bool = option(False, help="a caption of several lines is several captions: use one per epoch")

    @property
    def changes_captions(self) -> bool:
        return self.shuffle_tags or self.tag_dropout > 0


def caption_seed(seed: int, epoch: int, index: int) -> list[int]:
    return [_CAPTION_STREAM, seed, epoch, index]


def vary_caption(caption: str, config: CaptionConfig, rng: np.random.Generator) -> str:
    """One training variant of ``caption``."""
    lines = [line.strip() for line in caption.splitlines() if line.strip()]
    if config.pick_line and len(lines) > 1:
        caption = lines[int(rng.integers(len(lines)))]
    if not config.changes_captions:
        return caption
    tags = [tag.strip() for tag in caption.split(config.separator) if tag.strip()]
    kept, rest = tags[:config.keep_tags], tags[config.keep_tags:]
    if config.tag_dropout > 0:
        rest = [tag for tag, draw in zip(rest, rng.random(len(rest))) if draw >= config.tag_dropout]
    if config.shuffle_tags:
        rest = [rest[i] for i in rng.permutation(len(rest))]
    joiner = config.separator + (" " if config.separator.strip() else "")
    return joiner.join(kept + rest)


class ItemCaptions:
    """``hook(item, epoch, index)``: the item with its caption varied; picklable, so workers run it."""

    def __init__(self, config: CaptionConfig, *, seed: int = 0):
        self.config, self.seed = config, seed

    def __call__(self, item: dict[str, Any], epoch: int, index: int) -> dict[str, Any]:
        caption = item.get("caption")
        if not caption:
            return item
        rng = np.random.default_rng(caption_seed(self.seed, epoch, index))
        return {**item, "caption": vary_caption(str(caption), self.config, rng)}


class CaptionedItems(Dataset):
    """``dataset``'s items with their captions varied per epoch; keys ``(epoch, index)`` (or plain indices)."""

    takes_epoch_keys = True

    def __init__(self, dataset: Dataset, config: CaptionConfig, *, seed: int = 0):
        self.dataset = dataset
        self.captions = ItemCaptions(config, seed=seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        inner = key if getattr(self.dataset, "takes_epoch_keys", False) else index
        return self.captions(dict(self.dataset[inner]), epoch, index)


class ChainedHooks:
    """Several item hooks of a streamed data set, run in order (masks, then captions)."""

    def __init__(self, *hooks):
        self.hooks = hooks

    def __call__(self, item: dict[str, Any], epoch: int, index: int) -> dict[str, Any]:
        for hook in self.hooks:
            item = hook(item, epoch, index)
        return item


__all__ = ["CaptionConfig", "CaptionedItems", "ChainedHooks", "ItemCaptions", "caption_seed", "vary_caption"]
