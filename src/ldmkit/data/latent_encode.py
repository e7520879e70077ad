"""Writing a latent cache: shards by position, resumable, shared out over the ranks of a ``torchrun`` launch.

Shard ``k`` holds the data set's positions ``k*shard_size .. (k+1)*shard_size - 1``, encoded in batches that
never cross a shard, so a shard's bytes do not depend on how many processes encoded the cache. Files, in the
order they are written::

    plan.json                  what is being encoded (count, shard size, data, split, autoencoder digest)
    shard-00000.safetensors    the shard (ldmkit.data.latent_shard)
    shard-00000.done.json      its record (rows, bytes, SHA-256), written after it: the shard is finished
    index.json                 written last, by rank 0 once every rank is done: the cache is complete

Rerunning with the same settings resumes: a finished shard is checked from its size and header only, and the
images of its positions are never read. Settings that differ from ``plan.json`` are refused, not mixed in.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, IterableDataset
from torch.utils.data._utils.collate import default_collate

from ldmkit.data.latent_shard import check_shard, write_shard
from ldmkit.data.transforms import CROP_TOP_LEFT, ORIGINAL_SIZE
from ldmkit.errors import DataError

INDEX, PLAN = "index.json", "plan.json"
FORMAT = 2  # 1: captions in shard-*.json, no records (read, not written)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def shard_name(k: int) -> str:
    return f"shard-{k:05d}"


class Ranks:
    """This process's rank among the encoding processes, and the two collectives encoding needs."""

    def __init__(self) -> None:
        self.on = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if self.on else (0, 1)

    def barrier(self) -> None:
        if self.on:
            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if not self.on:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def _settings(meta: dict[str, Any]) -> dict[str, Any]:
    """What must not change between runs that write one cache (the autoencoder may move, not change)."""
    auto = {k: v for k, v in (meta.get("autoencoder") or {}).items() if k != "path"}
    return json.loads(json.dumps({**meta, "autoencoder": auto}))


def read_record(path: Path) -> dict[str, Any]:
    """A shard's ``.done.json`` (rows, bytes, sha256)."""
    try:
        record = json.loads(path.read_text())
        if not all(isinstance(record.get(k), t) for k, t in (("rows", int), ("bytes", int), ("sha256", str))):
            raise ValueError("rows, bytes or sha256 missing")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} cannot be read ({exc}); delete it and its shard, then rerun `ldm encode` with "
                        "the same arguments to encode that shard again") from None
    return record


def _prepare(out: Path, plan: dict[str, Any], n_shards: int) -> list[int]:
    """(rank 0) Check or write ``plan.json``; the shards not yet finished."""
    plan_path = out / PLAN
    if plan_path.is_file():
        try:
            before = json.loads(plan_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{plan_path} cannot be read ({exc}); delete {out} to encode again") from None
        differ = sorted(k for k in set(plan) | set(before) if plan.get(k) != before.get(k))
        if differ:
            raise DataError(f"{out} holds a latent cache begun with other settings ({', '.join(differ)} differ); "
                            "rerun with the settings of that run, give another --out, or delete it to start over")
    elif (out / INDEX).is_file() or any(out.glob("shard-*.safetensors")):
        raise DataError(f"{out} holds a latent cache of an older ldm encode (no {PLAN}); give another --out, "
                        "or delete it to encode again")
    else:
        atomic_write_text(plan_path, json.dumps(plan, indent=2))
    todo = []
    for k in range(n_shards):
        shard, done = out / f"{shard_name(k)}.safetensors", out / f"{shard_name(k)}.done.json"
        if done.is_file() and shard.is_file():
            check_shard(shard, read_record(done))  # size and header: a truncated shard is an error
        else:  # never written, interrupted before its record, or deleted to be encoded again
            todo.append(k)
    return todo


class ShardBatches:
    """Batch sampler: the positions of ``shards`` in batches of ``batch_size`` that never cross a shard."""

    def __init__(self, shards: list[int], shard_size: int, count: int, batch_size: int):
        self.batches: list[tuple[int, list[int]]] = []  # (shard, positions)
        for k in shards:
            stop = min((k + 1) * shard_size, count)
            for b in range(k * shard_size, stop, batch_size):
                self.batches.append((k, list(range(b, min(b + batch_size, stop)))))

    def __iter__(self):
        return iter([positions for _, positions in self.batches])

    def __len__(self) -> int:
        return len(self.batches)


def _collate_present(items: list[dict | None]) -> dict | None:
    """Batch the samples that could be read (a tar sample that does not decode is None)."""
    items = [item for item in items if item is not None]
    return default_collate(items) if items else None


def positional(dataset: Dataset) -> Dataset:
    """A map-style view of ``dataset`` (streamed tar shards are read by position)."""
    if isinstance(dataset, IterableDataset):
        from ldmkit.data.shards import ShardDataset, StoredOrder

        if not isinstance(dataset, ShardDataset):
            raise DataError(f"{type(dataset).__name__} streams its samples: it cannot be encoded by position")
        return StoredOrder(dataset)
    return dataset


def write_latent_cache(
    out: str | Path,
    dataset: Dataset,
    encode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]],
    *,
    shard_size: int,
    batch_size: int,
    meta: dict[str, Any],
    num_workers: int = 0,
    progress: bool = True,
) -> Path:
    """Encode ``dataset`` (items: image [3, H, W], label, caption) into the cache ``out``; every rank of an
    initialised process group takes its share of the unfinished shards. ``encode(images [B, 3, H, W]) ->
    (mean, std | None)``, each [B, c, h, w] and already scaled. Returns ``out``."""
    out, ranks = Path(out), Ranks()
    dataset = positional(dataset)
    count = len(dataset)
    n_shards = max(1, math.ceil(count / shard_size))
    plan = {"format": FORMAT, "count": count, "shard_size": shard_size, "settings": _settings(meta)}
    answer: tuple[str, Any]
    if ranks.rank == 0:
        try:
            out.mkdir(parents=True, exist_ok=True)
            answer = ("todo", _prepare(out, plan, n_shards))
        except DataError as exc:  # every rank must leave with the error, not wait for rank 0
            answer = ("error", str(exc))
    answer = ranks.broadcast(answer if ranks.rank == 0 else None)
    if answer[0] == "error":
        raise DataError(answer[1])
    mine = answer[1][ranks.rank:: ranks.world]
    _encode_shards(out, dataset, mine, encode, shard_size=shard_size, batch_size=batch_size,
                   num_workers=num_workers, progress=progress and ranks.rank == 0)
    ranks.barrier()  # every shard is on disk before the index says the cache is complete
    failed = None
    if ranks.rank == 0:
        try:
            write_index(out, meta, n_shards, shard_size)
        except DataError as exc:
            failed = str(exc)
    failed = ranks.broadcast(failed)
    if failed is not None:
        raise DataError(failed)
    return out


def _encode_shards(out: Path, dataset: Dataset, shards: list[int], encode: Callable, *, shard_size: int,
                   batch_size: int, num_workers: int, progress: bool) -> None:
    """Encode and write ``shards`` (only their positions are read)."""
    if not shards:
        return
    batches = ShardBatches(shards, shard_size, len(dataset), batch_size)
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=_collate_present)
    bar = None
    if progress:
        from ldmkit.progress import progress_bar

        bar = progress_bar(total=sum(len(p) for _, p in batches.batches), desc="encode", unit="img")
    buffer: dict[str, list] = {"mean": [], "std": [], "label": [], "caption": [], "geometry": []}
    for (k, positions), batch in zip(batches.batches, loader):
        if batch is not None:
            n = batch["image"].shape[0]
            with torch.no_grad():
                mean, std = encode(batch["image"])
            buffer["mean"].append(mean.float().cpu())  # [n, c, h, w]
            if std is not None:
                buffer["std"].append(std.float().cpu())
            labels = batch.get("label")
            buffer["label"].append(torch.as_tensor(labels if labels is not None else [-1] * n, dtype=torch.int64))
            captions = batch.get("caption")
            buffer["caption"].extend(list(captions) if captions is not None else [""] * n)
            if batch.get(ORIGINAL_SIZE) is not None:  # where each image came from, for size conditioning
                output = torch.tensor(batch["image"].shape[-2:]).expand(n, 2)
                buffer["geometry"].append(torch.cat([batch[ORIGINAL_SIZE], batch[CROP_TOP_LEFT], output], dim=1)
                                          .to(torch.int64))
        if bar is not None:
            bar.update(len(positions))
        if positions[-1] == min((k + 1) * shard_size, len(dataset)) - 1:  # the shard's last batch
            _flush(out, k, buffer)
    if bar is not None:
        bar.close()


def _flush(out: Path, k: int, buffer: dict[str, list]) -> None:
    tensors = {"label": torch.cat(buffer["label"]) if buffer["label"] else torch.zeros(0, dtype=torch.int64),
               "mean": torch.cat(buffer["mean"]) if buffer["mean"] else torch.zeros(0)}
    if buffer["std"]:
        tensors["std"] = torch.cat(buffer["std"])
    if buffer["geometry"]:
        tensors["geometry"] = torch.cat(buffer["geometry"])  # [N, 6]
    record = write_shard(out / f"{shard_name(k)}.safetensors", tensors, buffer["caption"])
    atomic_write_text(out / f"{shard_name(k)}.done.json", json.dumps(record))
    for values in buffer.values():
        values.clear()


def write_index(out: Path, meta: dict[str, Any], n_shards: int, shard_size: int) -> None:
    """(rank 0, at the end) ``index.json`` from the shards' records, each checked against its file."""
    records, latent_shape, has_std, dtype = [], None, False, None
    for k in range(n_shards):
        done = out / f"{shard_name(k)}.done.json"
        if not done.is_file():
            raise DataError(f"{done} is missing although every rank finished; rerun `ldm encode` with the same "
                            "arguments to encode that shard")
        record = read_record(done)
        tensors = check_shard(out / f"{shard_name(k)}.safetensors", record)
        if record["rows"] and latent_shape is None:
            latent_shape, has_std = list(tensors["mean"].shape[1:]), "std" in tensors
            dtype = str(tensors["mean"].dtype).removeprefix("torch.")
        records.append(record)
    if latent_shape is None:
        raise DataError(f"no image of the data set could be encoded into {out}")
    index = dict(meta, format=FORMAT, count=sum(r["rows"] for r in records), latent_shape=latent_shape,
                 has_std=has_std, dtype=dtype, shard_size=shard_size,
                 shards=[shard_name(k) for k in range(n_shards)], shard_records=records)
    atomic_write_text(out / INDEX, json.dumps(index, indent=2))

