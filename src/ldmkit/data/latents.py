"""Latents encoded ahead of training (DESIGN habit 8), and the data set that reads them back from disk.

Layout of a latent cache directory (written by :mod:`ldmkit.data.latent_encode`, one shard's format in
:mod:`ldmkit.data.latent_shard`)::

    index.json                 autoencoder path + SHA-256, latent shape, scale, count, shards and their records
    plan.json                  the settings being encoded (a resumed run must match them)
    shard-00000.safetensors    mean [N, c, h, w], std [N, c, h, w] (KL only), label [N], captions
    shard-00000.done.json      the shard's record: rows, bytes, SHA-256 (it is finished)

Latents are stored already multiplied by the autoencoder's scale factor (unit variance, §3.1).
:class:`LatentDataset` reads one row at a time from the shard files: its memory does not grow with the
cache. Caches of the first format (captions in ``shard-*.json``, no records) are still read; their
captions are held in memory.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.data import Dataset

from ldmkit.data.latent_encode import INDEX, write_latent_cache
from ldmkit.data.latent_shard import REDO, ShardFiles, Tensor, check_shard, file_sha256, read_header, shard_rows
from ldmkit.data.transforms import CROP_TOP_LEFT, ORIGINAL_SIZE, OUTPUT_SIZE
from ldmkit.errors import DataError
from ldmkit.io.model_dir import ModelDirInfo, read_model_dir

__all__ = ["INDEX", "LatentDataset", "autoencoder_record", "check_cache_autoencoder", "read_latent_index",
           "verify_latent_cache", "write_latent_cache"]


def autoencoder_record(info: ModelDirInfo) -> dict[str, Any]:
    """What a cache keeps of the autoencoder that made it: where it was, its weights' SHA-256 and the latent
    scale and shift its latents were multiplied with (those live in config.json, not in the weights)."""
    return {"path": str(info.path.resolve()), "sha256": info.files.get("model"),
            "scale_factor": info.config.get("scale_factor"), "shift_factor": info.config.get("shift_factor")}


def check_cache_autoencoder(path: str | Path, index: dict[str, Any], autoencoder: str | Path) -> None:
    """Refuse to train on a cache made by another autoencoder (weights or latent scale): the model would be
    saved with a decoder that does not read its latents."""
    made = index.get("autoencoder") or {}
    now = autoencoder_record(read_model_dir(autoencoder, kind="autoencoder"))
    for key, what in (("sha256", "weights"), ("scale_factor", "latent scale"), ("shift_factor", "latent shift")):
        if made.get(key) is not None and now[key] is not None and made[key] != now[key]:
            raise DataError(f"the latent cache {path} was encoded by another autoencoder ({what} differ from "
                            f"{autoencoder}, made from {made.get('path')}): encode it again with this autoencoder "
                            "(ldm encode) or train with the one that made it")


def read_latent_index(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    index = path / INDEX
    if not index.is_file():
        raise DataError(f"{path} is not a complete latent cache (no {INDEX}); run `ldm encode` again to finish it")
    try:
        data = json.loads(index.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("shards"), list):
            raise ValueError("no shard list")
        if not all(isinstance(n, str) and n.startswith("shard-") and Path(n).name == n for n in data["shards"]):
            raise ValueError("shard names must be shard-NNNNN files of the cache")
        if not (isinstance(data.get("latent_shape"), list) and len(data["latent_shape"]) == 3):
            raise ValueError("no latent_shape [c, h, w]")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{index} cannot be read ({exc}); rerun `ldm encode` with the same arguments to rewrite "
                        "it") from None
    return data


def _mismatch(path: Path, what: str) -> DataError:
    return DataError(f"{path / INDEX} does not match its shards ({what}); rerun `ldm encode` with the same "
                     "arguments to rewrite it")


def shard_layouts(path: Path, index: dict[str, Any]) -> list[dict[str, Tensor]]:
    """The tensors of every shard, checked against the index (sizes and headers only: nothing is loaded)."""
    records = index.get("shard_records")
    if records is not None and len(records) != len(index["shards"]):
        raise _mismatch(path, f"{len(records)} records for {len(index['shards'])} shards")
    layouts, total = [], 0
    for k, name in enumerate(index["shards"]):
        file = path / f"{name}.safetensors"
        if records is not None:
            tensors = check_shard(file, records[k])
        else:
            if not file.is_file():
                raise DataError(f"{file} is missing; encode the cache again (ldm encode --out NEW)")
            tensors = read_header(file)
        rows = shard_rows(file, tensors)
        if rows and list(tensors["mean"].shape[1:]) != list(index["latent_shape"]):
            raise _mismatch(path, f"{name} holds latents of shape {list(tensors['mean'].shape[1:])}, the index "
                                  f"says {index['latent_shape']}")
        if rows and ("std" in tensors) != bool(index.get("has_std", "std" in tensors)):
            raise _mismatch(path, f"{name} {'has' if 'std' in tensors else 'lacks'} the posterior std")
        layouts.append(tensors)
        total += rows
    if total != index.get("count", total):
        raise _mismatch(path, f"the shards hold {total} latents, the index says {index['count']}")
    return layouts


def verify_latent_cache(path: str | Path) -> int:
    """Check every shard's SHA-256 against the one recorded when it was written (reads the whole cache);
    returns the number of shards checked."""
    path = Path(path)
    index = read_latent_index(path)
    records = index.get("shard_records")
    if records is None:
        raise DataError(f"{path} was written by an older ldm encode and records no digests")
    shard_layouts(path, index)
    for name, record in zip(index["shards"], records):
        if file_sha256(path / f"{name}.safetensors") != record["sha256"]:
            raise DataError(f"{path / name}.safetensors does not have the SHA-256 it was written with (damaged); "
                            f"{REDO}")
    return len(records)


class ShardColumn(Sequence):
    """One value per latent (``caption`` or ``label``) read from the shards when asked; iterating reads a
    shard at a time. Nothing is held, so a column of a million captions costs no memory."""

    def __init__(self, dataset: LatentDataset, kind: str):
        self.dataset, self.kind = dataset, kind

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.dataset.value(self.kind, *self.dataset.locate(i))

    def __iter__(self) -> Iterator:
        for s in range(len(self.dataset.layouts)):
            yield from self.dataset.shard_values(self.kind, s)

    def __eq__(self, other: object) -> bool:  # like the list it stands for
        if isinstance(other, (ShardColumn, list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


class LatentDataset(Dataset):
    """Pre-encoded latents read from disk a row at a time; a sample is a dict like the image sources' but
    with latents.

    Each item: ``latent`` [c, h, w] (a posterior sample ``mean + std * randn`` from the torch RNG when
    ``sample_posterior`` and the cache has std — else the mean), ``label``, ``caption``, and where the cache
    recorded them the image's geometry (``original_size``, ``crop_top_left``, ``output_size``). ``captions`` and
    ``labels`` are sequences read on demand; ``mean`` and ``std`` load a whole column (inspection and tests).
    At most ``max_open_shards`` shard files are open per process.
    """

    def __init__(self, path: str | Path, sample_posterior: bool = True, max_open_shards: int = 32):
        self.path = Path(path)
        self.index = read_latent_index(self.path)
        self.layouts = shard_layouts(self.path, self.index)
        self.files = ShardFiles([self.path / f"{n}.safetensors" for n in self.index["shards"]], max_open_shards)
        self.starts = [0]  # first latent of each shard, then the count
        for tensors in self.layouts:
            self.starts.append(self.starts[-1] + tensors["label"].shape[0])
        self.sample_posterior = sample_posterior and any("std" in t for t in self.layouts)
        self.labels = ShardColumn(self, "label")
        # The first format kept captions in JSON files: those are read once and held.
        self._json_captions = None if self.index.get("format", 1) >= 2 else \
            [c for n in self.index["shards"] for c in json.loads((self.path / f"{n}.json").read_text())]
        self.captions: Sequence[str] = self._json_captions if self._json_captions is not None else \
            ShardColumn(self, "caption")

    @property
    def label(self) -> ShardColumn:
        return self.labels

    def __len__(self) -> int:
        return self.starts[-1]

    def locate(self, i: int) -> tuple[int, int]:
        """Latent ``i`` -> (shard, row)."""
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        s = bisect.bisect_right(self.starts, i) - 1
        return s, i - self.starts[s]

    def value(self, kind: str, s: int, r: int) -> Any:
        """The label (int) or caption (str) of row ``r`` of shard ``s``."""
        t = self.layouts[s]
        if kind == "label":
            return int(self.files.rows(s, t["label"], r, r + 1)[0])
        if self._json_captions is not None:
            return self._json_captions[self.starts[s] + r]
        ends = self.files.rows(s, t["caption_end"], max(r - 1, 0), r + 1).tolist()  # [end of r-1, end of r]
        start, stop = (0, ends[0]) if r == 0 else ends
        return bytes(self.files.rows(s, t["caption_utf8"], start, stop).numpy()).decode("utf-8")

    def shard_values(self, kind: str, s: int) -> list:
        """Every label or caption of shard ``s``."""
        t = self.layouts[s]
        rows = self.starts[s + 1] - self.starts[s]
        if kind == "label":
            return self.files.rows(s, t["label"], 0, rows).tolist()
        if self._json_captions is not None:
            return self._json_captions[self.starts[s]: self.starts[s + 1]]
        ends = [0] + self.files.rows(s, t["caption_end"], 0, rows).tolist()
        blob = bytes(self.files.rows(s, t["caption_utf8"], 0, ends[-1]).numpy())
        return [blob[a:b].decode("utf-8") for a, b in zip(ends, ends[1:])]

    def column(self, name: str) -> torch.Tensor:
        """The whole ``mean`` or ``std`` column [N, c, h, w], loaded: for inspection, not for training."""
        return torch.cat([self.files.rows(s, t[name], 0, self.starts[s + 1] - self.starts[s])
                          for s, t in enumerate(self.layouts) if name in t])

    @property
    def mean(self) -> torch.Tensor:
        return self.column("mean")

    @property
    def std(self) -> torch.Tensor | None:
        return self.column("std") if self.sample_posterior else None

    def __getitem__(self, i: int) -> dict[str, Any]:
        s, r = self.locate(i)
        t = self.layouts[s]
        latent = self.files.rows(s, t["mean"], r, r + 1)[0]  # [c, h, w]
        if self.sample_posterior:
            # The KL posterior is sampled afresh each time (§3.1: z ~ q(z|x)); the torch RNG is checkpointed.
            latent = latent + self.files.rows(s, t["std"], r, r + 1)[0] * torch.randn_like(latent)
        item = {"latent": latent, "label": self.value("label", s, r), "caption": self.value("caption", s, r)}
        if "geometry" in t:  # original size, crop corner and encoded size of the image, for size conditioning
            geometry = self.files.rows(s, t["geometry"], r, r + 1)[0]  # [6]
            item.update({ORIGINAL_SIZE: geometry[0:2], CROP_TOP_LEFT: geometry[2:4], OUTPUT_SIZE: geometry[4:6]})
        return item
