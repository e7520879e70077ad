"""Resident memory of training on a latent cache far larger than the memory it is read with.

Builds a synthetic cache of ``--count`` latents (4×8×8 fp16 each, a label and a short caption; written straight
as shards with ldmkit's shard writer, not through an autoencoder), then iterates training-style batches through
it — :class:`~ldmkit.data.latents.LatentDataset` under ``build_dataloader`` (shuffled by the resumable sampler,
``--batch`` per batch) — and records the process's RSS (``VmRSS`` of ``/proc/self/status``, plus the data-loader
workers' with ``--workers``) every ``--every`` batches. At the end, for contrast, the whole cache is loaded
into memory as the first LatentDataset did. Writes ``latent_cache_rss.json`` and ``latent_cache_rss.md`` under
``--out``::

    python bench/latent_cache_rss.py --dir /tmp/latent-cache-rss --out bench/results/latent-cache
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

LATENT = (4, 8, 8)


def rss_mib(pid: int | str = "self") -> dict[str, float]:
    """VmRSS / RssAnon / RssFile / VmHWM of a process, in MiB (Linux)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def children_rss_mib() -> float:
    """Summed VmRSS of this process's children (data-loader workers)."""
    total = 0.0
    for task in Path("/proc/self/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                total += rss_mib(child)["VmRSS"]
            except (FileNotFoundError, KeyError):
                pass
    return total


def build_cache(out: Path, count: int, shard_size: int, shape: tuple[int, ...] = LATENT, classes: int = 1000,
                dtype: torch.dtype = torch.float16) -> float:
    """Write ``count`` random latents of ``shape`` (labels below ``classes``) as shards + records + index, straight
    with ldmkit's shard writer; returns seconds."""
    from ldmkit.data.latent_encode import atomic_write_text, shard_name, write_index
    from ldmkit.data.latent_shard import write_shard

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    n_shards = math.ceil(count / shard_size)
    for k in range(n_shards):
        rows = min(shard_size, count - k * shard_size)
        g = torch.Generator().manual_seed(k)
        tensors = {"mean": torch.randn(rows, *shape, generator=g).to(dtype),
                   "label": torch.randint(0, classes, (rows,), generator=g)}
        captions = [f"synthetic latent {k * shard_size + i}" for i in range(rows)]
        record = write_shard(out / f"{shard_name(k)}.safetensors", tensors, captions)
        atomic_write_text(out / f"{shard_name(k)}.done.json", json.dumps(record))
    write_index(out, {"autoencoder": None, "data": {"source": "synthetic latents"}}, n_shards, shard_size)
    return time.perf_counter() - start


def iterate(path: Path, batch: int, workers: int, every: int, max_seconds: float) -> dict:
    """One shuffled pass (or ``max_seconds`` of it), RSS sampled every ``every`` batches."""
    from ldmkit.data.latents import LatentDataset
    from ldmkit.data.loader import build_dataloader

    dataset = LatentDataset(path)
    opened = rss_mib()
    loader, _ = build_dataloader(None, dataset, batch, seed=0, rank=0, world_size=1, num_workers=workers)
    samples, seen, start = [], 0, time.perf_counter()
    checksum = 0.0
    for b, items in enumerate(loader):
        latents = items["latent"].float()  # [B, 4, 8, 8], as the trainer moves it to the device
        checksum += float(latents[:, 0, 0, 0].sum())
        seen += latents.shape[0]
        if b % every == 0:
            now = rss_mib()
            samples.append({"batch": b, "latents_seen": seen, "seconds": round(time.perf_counter() - start, 1),
                            "rss_mib": round(now["VmRSS"], 1), "anon_mib": round(now["RssAnon"], 1),
                            "file_mib": round(now["RssFile"], 1),
                            "workers_rss_mib": round(children_rss_mib(), 1) if workers else 0.0})
        if time.perf_counter() - start > max_seconds:
            break
    seconds = time.perf_counter() - start
    return {"after_open_mib": round(opened["VmRSS"], 1), "samples": samples, "latents_seen": seen,
            "seconds": round(seconds, 1), "latents_per_s": round(seen / seconds), "peak_hwm_mib": rss_mib()["VmHWM"],
            "checksum": checksum}


def in_memory(path: Path) -> float:
    """RSS after loading every shard's mean as the in-memory LatentDataset did (MiB)."""
    from safetensors.torch import load_file

    index = json.loads((path / "index.json").read_text())
    means = [load_file(str(path / f"{n}.safetensors"))["mean"] for n in index["shards"]]
    whole = torch.cat(means)
    del means
    rss = rss_mib()["VmRSS"]
    del whole
    return rss


def markdown(report: dict) -> str:
    it = report["iterate"]
    rss = [s["rss_mib"] for s in it["samples"]]
    lines = [f"# Latent cache RSS ({report['count']:,} latents of {report['latent']} {report['dtype']})", "",
             f"`{report['command']}`", "",
             f"torch {report['torch']}, Python {report['python']}, {report['cpu']}, {os.cpu_count()} cores; "
             f"cache {report['cache_mib']:.0f} MiB on disk in {report['shards']} shards, built in "
             f"{report['build_s']:.0f} s", "",
             f"- RSS after imports: {report['rss_start_mib']:.0f} MiB; after building the cache: "
             f"{report['rss_built_mib']:.0f} MiB; after opening it: {it['after_open_mib']:.0f} MiB",
             f"- while iterating: {min(rss):.0f}–{max(rss):.0f} MiB over {it['latents_seen']:,} latents "
             f"({it['seconds']:.0f} s, {it['latents_per_s']:,} latents/s, batch {report['batch']}, "
             f"{report['workers']} workers)",
             f"- the whole cache loaded into memory, for contrast: {report['in_memory_mib']:.0f} MiB", "",
             "| batch | latents seen | s | RSS MiB | anon MiB | file MiB | workers' RSS MiB |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {s['batch']} | {s['latents_seen']:,} | {s['seconds']} | {s['rss_mib']} | {s['anon_mib']} | "
              f"{s['file_mib']} | {s['workers_rss_mib']} |" for s in it["samples"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="latents in the synthetic cache")
    parser.add_argument("--shard-size", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0, help="data-loader workers")
    parser.add_argument("--every", type=int, default=200, help="sample RSS every this many batches")
    parser.add_argument("--max-seconds", type=float, default=420, help="stop iterating after this long")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/latent-cache-rss"), help="where the cache is built")
    parser.add_argument("--keep", action="store_true", help="keep the cache (and reuse it next time)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    report = {"command": "python " + " ".join(sys.argv), "count": args.count, "latent": "×".join(map(str, LATENT)),
              "dtype": "fp16", "batch": args.batch, "workers": args.workers, "torch": torch.__version__,
              "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
              "rss_start_mib": rss_mib()["VmRSS"]}
    cache = args.dir / "latents"
    if not (cache / "index.json").is_file():
        shutil.rmtree(cache, ignore_errors=True)
        report["build_s"] = build_cache(cache, args.count, args.shard_size)
    else:
        report["build_s"] = 0.0
    report["rss_built_mib"] = rss_mib()["VmRSS"]
    report["cache_mib"] = sum(p.stat().st_size for p in cache.iterdir()) / 2**20
    report["shards"] = len(list(cache.glob("*.safetensors")))
    report["iterate"] = iterate(cache, args.batch, args.workers, args.every, args.max_seconds)
    report["in_memory_mib"] = in_memory(cache)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latent_cache_rss.json").write_text(json.dumps(report, indent=2))
    (args.out / "latent_cache_rss.md").write_text(markdown(report))
    print(markdown(report))
    if not args.keep:
        shutil.rmtree(args.dir / "latents")


if __name__ == "__main__":
    main()
