"""Encoding a latent cache with two CPU processes (gloo): disjoint shards per rank, the bytes of one process."""

import json

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.unit.test_latent_cache import Images, _files, _write

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")


def _worker(rank: int, world: int, init_file: str, out: str, reads: str) -> None:
    from pathlib import Path

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        images = Images()
        _write(Path(out), images)
        Path(reads, f"rank-{rank}.json").write_text(json.dumps(images.read))
    finally:
        dist.destroy_process_group()


def test_two_processes_write_the_cache_of_one(tmp_path):
    single = _write(tmp_path / "single")
    out, reads = tmp_path / "two", tmp_path / "reads"
    reads.mkdir()
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(out), str(reads)), nprocs=2, join=True)
    read = [set(json.loads((reads / f"rank-{r}.json").read_text())) for r in (0, 1)]
    assert not read[0] & read[1] and read[0] | read[1] == set(range(len(Images())))  # disjoint shards
    assert read[0] == set(range(0, 6)) | set(range(12, 18))  # rank 0: shards 0 and 2; rank 1: shards 1 and 3
    assert _files(out) == _files(single)  # shards, records, plan and index: byte for byte
