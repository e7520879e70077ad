"""Where reference images come from: a folder of image files, or a data set of :mod:`ldmkit.data`
(a preset or YAML file of ``configs/data/`` plus ``key=value`` overrides)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Subset

from ldmkit.errors import DataError
from ldmkit.evaluation.distributed import shard_indices
from ldmkit.evaluation.images import folder_batches


class ReferenceOrigin(NamedTuple):
    """Where reference images came from: ``text`` for people; ``data`` — ``{"config": DataConfig as a dict,
    "split": name}`` — for a data set, so that a later step (captions for ``--prompts-from-data``) rebuilds it
    from the statistics file without reading ``text`` back (None for a folder)."""

    text: str
    data: dict[str, Any] | None = None


def _collate(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Keep only what evaluation uses: "image" [B, 3, H, W] and, if every sample has one, "label" [B]."""
    if not samples or not isinstance(samples[0], dict) or "image" not in samples[0]:
        raise DataError("data set samples must be dicts with an 'image' tensor [3, H, W] in [-1, 1]")
    batch = {"image": torch.stack([s["image"] for s in samples])}
    if all(s.get("label") is not None for s in samples):
        batch["label"] = torch.as_tensor([int(s["label"]) for s in samples])
    return batch


def dataset_batches(dataset: Any, *, batch_size: int = 50, limit: int | None = None,
                    num_workers: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of this rank's share of a map-style data set (first ``limit`` samples over all ranks)."""
    count = len(dataset) if limit is None else min(limit, len(dataset))
    subset = Subset(dataset, list(shard_indices(count)))
    yield from DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=_collate)


def reference_source(data: str, overrides: Sequence[str] = (), *, split: str = "train", batch_size: int = 50,
                     limit: int | None = None, num_workers: int = 0) -> tuple[Iterator[Any], ReferenceOrigin]:
    """(batches of this rank's share, description) for ``data``: a folder of images, or a data preset/YAML."""
    path = Path(data)
    if path.is_dir():
        if overrides:
            raise DataError(f"{data} is a folder of images; config overrides ({overrides[0]}, …) do not apply to it")
        source = ReferenceOrigin(f"folder {path.resolve()}" + (f" (first {limit})" if limit else ""))
        return folder_batches(path, batch_size=batch_size, limit=limit, num_workers=num_workers), source
    from ldmkit.config import load_config, to_dict
    from ldmkit.data import DataConfig, build_dataset

    config = load_config(DataConfig, data, overrides, group="data")
    dataset = build_dataset(config, split)
    text = f"data {json.dumps(to_dict(config), sort_keys=True)} split={split}" + (f" (first {limit})" if limit else "")
    source = ReferenceOrigin(text, {"config": to_dict(config), "split": split})
    return dataset_batches(dataset, batch_size=batch_size, limit=limit, num_workers=num_workers), source
