"""Feature extraction sharded over two CPU processes (gloo) gives the features of one process; inside
``this_rank_alone`` one rank evaluates everything by itself while the other waits."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ldmkit.evaluation.distributed import gather_rows, shard_indices, this_rank_alone
from ldmkit.evaluation.extract import extract_features
from ldmkit.evaluation.random_features import RandomConvFeatures


def _images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(7, 3, 16, 16, generator=g) * 2 - 1


def _worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        rows = gather_rows(torch.full((rank * 2, 3), float(rank)))  # rank 0 has no rows at all
        mine = list(shard_indices(7))
        out = extract_features(RandomConvFeatures(), _images()[mine], batch_size=2)
        alone = {}
        if rank == 0:  # as a run's validation: rank 0 evaluates while rank 1 waits at the barrier
            with this_rank_alone():
                alone = {"indices": list(shard_indices(7)),
                         "features": extract_features(RandomConvFeatures(), _images(), batch_size=2).features}
        dist.barrier()
        after = gather_rows(torch.full((1, 1), float(rank)))  # outside, the two ranks gather again
        if rank == 0:
            torch.save({"rows": rows, "indices": mine, "features": out.features, "fingerprint": out.fingerprint,
                        "size": out.image_size, "alone": alone, "after": after}, out_file)
    finally:
        dist.destroy_process_group()


def test_two_process_gather_matches_single_process(tmp_path):
    out_file = tmp_path / "result.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(out_file)), nprocs=2, join=True)
    result = torch.load(out_file)
    assert result["indices"] == [0, 2, 4, 6]
    torch.testing.assert_close(result["rows"], torch.ones(2, 3))
    single = extract_features(RandomConvFeatures(), _images(), batch_size=2)
    order = [0, 2, 4, 6, 1, 3, 5]  # rank 0's share, then rank 1's
    torch.testing.assert_close(result["features"], single.features[order], rtol=1e-4, atol=1e-5)
    assert result["fingerprint"] == single.fingerprint and result["size"] == (16, 16)
    assert result["alone"]["indices"] == list(range(7))
    torch.testing.assert_close(result["alone"]["features"], single.features, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(result["after"], torch.tensor([[0.0], [1.0]]))
