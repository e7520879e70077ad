"""Data sources: synthetic shapes, image folders, tar shards, Fashion-MNIST, emoji sets.

All sources yield the same sample dict (see :mod:`ldmkit.data.config`): ``image`` float32 ``[C, H, W]``
in ``[-1, 1]``, ``label`` int (-1: none), ``caption`` str ("": none), and for synthetic scenes
``segmentation`` int64 ``[H, W]``. :func:`build_dataset` makes one from a :class:`DataConfig`;
:func:`build_dataloader` makes a resumable loader over a rank's share of it.
"""

from ldmkit.data.config import DataConfig, SyntheticConfig
from ldmkit.data.loader import (
    ResumableDataLoader,
    build_dataloader,
    build_dataset,
    class_names,
    dataset_captions,
    num_classes,
)
from ldmkit.data.sampler import ResumableSampler
from ldmkit.data.shards import ShardDataset, write_shards
from ldmkit.data.synthetic import SyntheticShapes, segmentation_classes

__all__ = [
    "DataConfig",
    "ResumableDataLoader",
    "ResumableSampler",
    "ShardDataset",
    "SyntheticConfig",
    "SyntheticShapes",
    "build_dataloader",
    "build_dataset",
    "class_names",
    "dataset_captions",
    "num_classes",
    "segmentation_classes",
    "write_shards",
]
