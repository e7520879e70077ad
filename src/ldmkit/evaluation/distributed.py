"""Sharding and gathering for evaluation under ``torchrun``: each rank extracts features of its share,
then every rank receives all rows (padded ``all_gather``, so ranks may hold different counts).

Work that rank 0 does while the other ranks wait (a training run's validation, ``ldm fit``'s evaluation) runs
inside :func:`this_rank_alone`: there evaluation neither shards nor gathers, since no other rank would answer.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.distributed as dist

from ldmkit import runtime

_alone = False  # inside this_rank_alone()


def is_distributed() -> bool:
    """Whether evaluation shares its work with other ranks."""
    return not _alone and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextlib.contextmanager
def this_rank_alone() -> Iterator[None]:
    """Evaluate as the only process: every item on this rank, no collective (the others are not taking part)."""
    global _alone
    before, _alone = _alone, True
    try:
        yield
    finally:
        _alone = before


def init_distributed_if_launched() -> bool:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); NCCL with accelerators, else gloo."""
    if runtime.world_size() <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(runtime.local_rank() % torch.cuda.device_count())
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    return True


def shard_indices(count: int) -> range:
    """The indices of ``count`` items this rank handles (rank, rank + world, …)."""
    if not is_distributed():
        return range(count)
    return range(dist.get_rank(), count, dist.get_world_size())


def _comm_device(tensor: torch.Tensor) -> torch.device:
    """Where the backend can exchange ``tensor``: gloo on the CPU, NCCL on this rank's accelerator."""
    if dist.get_backend() == "nccl":
        return tensor.device if tensor.device.type != "cpu" else torch.device(torch.cuda.current_device())
    return torch.device("cpu")


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` [n_r, ...] (at most 4 dims) of every rank along dim 0, in rank order, on every rank.

    A rank with no rows may pass any empty tensor of the right dtype: the trailing shape is taken from the
    ranks that have rows.
    """
    if not is_distributed():
        return tensor
    device = _comm_device(tensor)
    world = dist.get_world_size()
    local = tensor.to(device).contiguous()
    # Every rank's [rows, ndim, d1, d2, d3] (trailing sizes padded with zeros).
    row = [local.shape[0], local.ndim, *local.shape[1:]] + [0] * (4 - local.ndim)
    shape_t = torch.tensor(row, device=device, dtype=torch.long)
    shapes = [torch.zeros_like(shape_t) for _ in range(world)]
    dist.all_gather(shapes, shape_t)
    rows = [[int(v) for v in s] for s in shapes]
    sizes = [r[0] for r in rows]
    filled = [r for r in rows if r[0] > 0] or rows
    trailing = tuple(filled[0][2:1 + filled[0][1]])
    if local.shape[1:] != trailing:
        local = local.reshape((local.shape[0], *trailing))  # only empty tensors reach this
    padded = local.new_zeros((max(sizes), *trailing))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)]).to(tensor.device)
