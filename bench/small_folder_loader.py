"""The data loader alone on a folder of a few dozen images: batches per second when every epoch starts its
workers afresh (a DataLoader's own behaviour) against ldmkit's loader, whose workers prepare batches across
the end of an epoch (:class:`ldmkit.data.loader.PrefetchingDataLoader`).

A folder smaller than the workers times the batch gives each worker at most one batch an epoch, and no worker
can start on the next epoch's batches before this one ends (``ldm fit`` on a 49-photo folder trained at 3 steps/s
on an H200, the same networks at 10 on 3,374 emoji: docs/results/fit.md). No GPU is used: the batches are read
and thrown away. Writes ``small_folder_loader.json`` under ``--out``::

    python scripts/photo_set.py /tmp/photos
    python bench/small_folder_loader.py --folder /tmp/photos --out bench/results/cpu-small-folder
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def batches_per_second(folder: Path, *, resolution: int, batch: int, workers: int, batches: int,
                       across_epochs: bool) -> float:
    from ldmkit.data import DataConfig, build_dataset
    from ldmkit.data.loader import ResumableDataLoader, build_dataloader
    from ldmkit.data.sampler import ResumableSampler

    cfg = DataConfig(source="folder", path=str(folder), resolution=resolution, label_source="none")
    dataset = build_dataset(cfg, split="train")
    if across_epochs:
        loader, _ = build_dataloader(cfg, dataset, batch, num_workers=workers)
    else:  # persistent workers, as before: each epoch's iteration starts with them idle
        sampler = ResumableSampler(len(dataset), drop_last=True)
        loader = ResumableDataLoader(dataset, position=sampler, sampler=sampler, batch_size=batch, drop_last=True,
                                     num_workers=workers, persistent_workers=True)
    warm, seen, start = 5, 0, 0.0
    while seen < warm + batches:
        for _ in loader:
            seen += 1
            if seen == warm:  # the workers have started
                start = time.perf_counter()
            if seen == warm + batches:
                break
    return batches / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, required=True, help="a folder of images (scripts/photo_set.py)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--batches", type=int, default=60, help="batches timed per setting")
    args = parser.parse_args()
    settings = dict(resolution=args.resolution, batch=args.batch, workers=args.workers, batches=args.batches)
    result = {"folder": str(args.folder), "images": len([p for p in args.folder.iterdir() if p.is_file() and not p.name.startswith(".")]),
              "cpu_count": os.cpu_count(), **settings,
              "epoch_by_epoch": batches_per_second(args.folder, across_epochs=False, **settings),
              "across_epochs": batches_per_second(args.folder, across_epochs=True, **settings)}
    result["ratio"] = result["across_epochs"] / result["epoch_by_epoch"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "small_folder_loader.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
