"""Latents encoded ahead of training (DESIGN habit 8), and the data set that reads them back.

Layout of a latent cache directory::

    index.json                 autoencoder path + SHA-256, latent shape, scale, count, shard list
    shard-00000.safetensors    mean [N, c, h, w], std [N, c, h, w] (KL only), label [N]
    shard-00000.json           captions of that shard (list of N strings)

Shards are written atomically one by one; rerunning ``ldm encode`` skips complete shards, so an
interrupted encoding resumes. ``index.json`` is written last and marks the cache complete.
Latents are stored already multiplied by the autoencoder's scale factor (unit variance, §3.1).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from ldmkit.errors import DataError
from ldmkit.io.model_dir import ModelDirInfo, read_model_dir

INDEX = "index.json"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_latent_cache(
    out: str | Path,
    batches: Iterable[dict[str, Any]],
    encode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]],
    *,
    total: int,
    shard_size: int,
    meta: dict[str, Any],
    progress: bool = True,
) -> Path:
    """Encode ``batches`` (dicts with image/label/caption) into ``out``; ``encode(images) -> (mean, std|None)``.

    ``batches`` must yield the data in a fixed order so that complete shards can be skipped on resume;
    ``shard_size`` must be a multiple of the batch size.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shards: list[str] = []
    buffer: dict[str, list] = {"mean": [], "std": [], "label": [], "caption": []}
    count = 0
    bar = None
    if progress:
        from ldmkit.progress import progress_bar

        bar = progress_bar(total=total, desc="encode", unit="img")

    def flush() -> None:
        name = f"shard-{len(shards):05d}"
        tensors = {"mean": torch.cat(buffer["mean"]).contiguous(), "label": torch.cat(buffer["label"])}
        if buffer["std"]:
            tensors["std"] = torch.cat(buffer["std"]).contiguous()
        tmp = out / f".{name}.safetensors.tmp"
        save_file(tensors, str(tmp))
        os.replace(tmp, out / f"{name}.safetensors")
        _atomic_write_text(out / f"{name}.json", json.dumps(buffer["caption"]))
        shards.append(name)
        for values in buffer.values():
            values.clear()

    done_before = {p.stem for p in out.glob("shard-*.safetensors")} & {p.stem for p in out.glob("shard-*.json")}
    in_shard = 0
    for batch in batches:
        n = batch["image"].shape[0]
        shard_name = f"shard-{len(shards):05d}"
        if shard_name in done_before:
            # This shard was completed by an earlier, interrupted run: skip its batches without encoding.
            in_shard += n
            count += n
            if bar is not None:
                bar.update(n)
            if in_shard >= shard_size:
                shards.append(shard_name)
                in_shard = 0
            continue
        with torch.no_grad():
            mean, std = encode(batch["image"])
        buffer["mean"].append(mean.float().cpu())
        if std is not None:
            buffer["std"].append(std.float().cpu())
        labels = batch.get("label")
        buffer["label"].append(torch.as_tensor(labels if labels is not None else [-1] * n, dtype=torch.int64))
        captions = batch.get("caption")
        buffer["caption"].extend(list(captions) if captions is not None else [""] * n)
        count += n
        in_shard += n
        if bar is not None:
            bar.update(n)
        if in_shard >= shard_size:
            flush()
            in_shard = 0
    if buffer["mean"]:
        flush()
    elif in_shard:
        shards.append(f"shard-{len(shards):05d}")
    if bar is not None:
        bar.close()
    first = load_file(str(out / f"{shards[0]}.safetensors"))["mean"]
    index = dict(meta, count=count, shards=shards, latent_shape=list(first.shape[1:]), has_std="std" in
                 load_file(str(out / f"{shards[0]}.safetensors")))
    _atomic_write_text(out / INDEX, json.dumps(index, indent=2))
    return out


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
    return json.loads(index.read_text())


class LatentDataset(Dataset):
    """Pre-encoded latents held in memory; a sample is a dict like the image sources' but with latents.

    Each item: ``latent`` [c, h, w] (a posterior sample when ``sample_posterior`` and the cache has std,
    drawn from a generator seeded by (seed, index, epoch-free draw count) — else the mean), ``label``,
    ``caption``.
    """

    def __init__(self, path: str | Path, sample_posterior: bool = True):
        self.path = Path(path)
        self.index = read_latent_index(self.path)
        means, stds, labels, captions = [], [], [], []
        for name in self.index["shards"]:
            tensors = load_file(str(self.path / f"{name}.safetensors"))
            means.append(tensors["mean"])
            if "std" in tensors:
                stds.append(tensors["std"])
            labels.append(tensors["label"])
            captions.extend(json.loads((self.path / f"{name}.json").read_text()))
        self.mean = torch.cat(means)
        self.std = torch.cat(stds) if stds and sample_posterior else None
        self.label = torch.cat(labels)
        self.captions = captions

    def __len__(self) -> int:
        return self.mean.shape[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        latent = self.mean[i]
        if self.std is not None:
            # The KL posterior is sampled afresh each time (§3.1: z ~ q(z|x)); the torch RNG is checkpointed.
            latent = latent + self.std[i] * torch.randn_like(latent)
        return {"latent": latent, "label": int(self.label[i]), "caption": self.captions[i]}
