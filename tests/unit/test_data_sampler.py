import pytest
import torch
from torch.utils.data import Dataset

from ldmkit.data import DataConfig, ResumableSampler, build_dataloader
from ldmkit.errors import DataError


class Numbers(Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"image": torch.full((1, 2, 2), float(i)), "label": i, "caption": f"n{i}"}


def test_permutation_per_epoch_is_seeded_and_complete():
    s = ResumableSampler(10, shuffle=True, seed=3)
    e0 = list(s)
    assert sorted(e0) == list(range(10)) and e0 == list(ResumableSampler(10, shuffle=True, seed=3))
    s.set_epoch(1)
    assert list(s) != e0 and sorted(s) == list(range(10))
    assert list(ResumableSampler(10, shuffle=False)) == list(range(10))
    assert list(ResumableSampler(10, shuffle=True, seed=4)) != e0


@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_share_the_epoch(drop_last):
    parts = [list(ResumableSampler(11, seed=1, rank=r, world_size=3, drop_last=drop_last)) for r in range(3)]
    assert len({len(p) for p in parts}) == 1
    flat = [i for p in parts for i in p]
    if drop_last:
        assert len(flat) == 9 and len(set(flat)) == 9
    else:
        assert set(flat) == set(range(11)) and len(flat) == 12  # padded by one repeat


def test_resume_mid_epoch_gives_exactly_the_remaining_order():
    s = ResumableSampler(17, seed=9, rank=1, world_size=2)
    s.set_epoch(4)
    whole = list(s)
    s.advance(5)
    state = s.state_dict()
    assert state == {"epoch": 4, "offset": 5}
    t = ResumableSampler(17, seed=9, rank=1, world_size=2)
    t.load_state_dict(state)
    t.set_epoch(4)  # same epoch: keeps the offset
    assert list(t) == whole[5:]
    t.set_epoch(5)
    assert t.state_dict() == {"epoch": 5, "offset": 0}
    with pytest.raises(DataError):
        t.load_state_dict({"epoch": 0, "offset": 99})


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_resume_counts_delivered_batches(workers):
    cfg, ds = DataConfig(), Numbers(22)

    def make():
        return build_dataloader(cfg, ds, 4, seed=5, rank=0, world_size=1, num_workers=workers, drop_last=True)

    loader, position = make()
    full = [b["label"].tolist() for b in loader]  # epoch 0
    assert len(full) == 5 and position.state_dict() == {"epoch": 1, "offset": 0}
    epoch1 = [b["label"].tolist() for b in loader]
    assert epoch1 != full

    loader, position = make()
    got = []
    for n, batch in enumerate(loader):
        got.append(batch["label"].tolist())
        if n == 2:
            break  # interrupted; workers had prefetched more
    state = position.state_dict()
    assert state == {"epoch": 0, "offset": 12}
    loader2, position2 = make()
    position2.load_state_dict(state)
    got += [b["label"].tolist() for b in loader2]
    assert got == full
    assert position2.state_dict() == {"epoch": 1, "offset": 0}
    assert [b["label"].tolist() for b in loader2] == epoch1


class _WhoLoads(torch.utils.data.Dataset):
    """Index and loading process of each sample."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> dict:
        import os

        return {"index": torch.tensor(i), "pid": torch.tensor(os.getpid())}


def test_workers_persist_across_epochs_and_resume_stays_exact():
    from ldmkit.data.loader import build_dataloader

    loader, position = build_dataloader(None, _WhoLoads(), 4, num_workers=2)
    pids, batches = set(), []
    for _ in range(3):
        for batch in loader:
            pids |= set(batch["pid"].tolist())
            batches.append(batch["index"].tolist())
    assert len(pids) == 2  # the same two workers served all three epochs
    assert position.state_dict() == {"epoch": 3, "offset": 0}
    per_epoch = len(batches) // 3  # 10 items: two passes an epoch, so each worker has two batches to prepare
    assert per_epoch == 5
    again, restored = build_dataloader(None, _WhoLoads(), 4, num_workers=2)
    restored.load_state_dict({"epoch": 1, "offset": 4})  # second batch of the second epoch
    assert [b["index"].tolist() for b in again] == batches[per_epoch + 1:2 * per_epoch]


def test_an_epoch_of_several_passes_is_several_permutations_the_first_unchanged():
    one, three = ResumableSampler(7, seed=3), ResumableSampler(7, seed=3, passes=3)
    order = three.epoch_indices(2).tolist()
    assert len(three) == 21 and len(order) == 21
    assert order[:7] == one.epoch_indices(2).tolist()  # a one-pass epoch's order, then two more
    assert all(sorted(order[k:k + 7]) == list(range(7)) for k in (0, 7, 14))
    assert order[7:14] != order[:7] and order[7:14] != order[14:]
    assert ResumableSampler(7, shuffle=False, passes=2).epoch_indices(0).tolist() == list(range(7)) * 2
    with pytest.raises(DataError, match="at least one pass"):
        ResumableSampler(7, passes=0)


def test_each_pass_of_an_epoch_keys_its_items_as_an_epoch_of_its_own():
    # MaskedItems draws an item's mask from its key: repeats within one epoch must not share a mask.
    sampler = ResumableSampler(5, seed=1, passes=3, epoch_keys=True)
    sampler.set_epoch(2)
    keys = list(sampler)
    assert [k[0] for k in keys] == [6] * 5 + [7] * 5 + [8] * 5
    assert [k[1] for k in keys] == sampler.epoch_indices().tolist()
    sampler.load_state_dict({"epoch": 2, "offset": 7})  # resumed inside the second pass
    assert list(sampler) == keys[7:]
    ranks = [list(ResumableSampler(5, seed=1, passes=2, epoch_keys=True, rank=r, world_size=2)) for r in (0, 1)]
    assert sorted(k for rank in ranks for k in rank) == sorted((j, i) for j in (0, 1) for i in range(5))
    assert list(ResumableSampler(5, seed=1, epoch_keys=True)) == [(0, i) for i in ResumableSampler(5, seed=1)]


def test_small_data_sets_get_enough_batches_per_worker():
    from ldmkit.data.loader import BATCHES_PER_WORKER, passes_per_epoch

    assert passes_per_epoch(49, 32, 0) == 1  # no workers: nothing prepares ahead
    assert passes_per_epoch(3374, 32, 8) == 1  # 105 batches already
    passes = passes_per_epoch(49, 32, 8)  # the photo folder of docs/results/fit.md
    assert 49 * passes // 32 >= BATCHES_PER_WORKER * 8 > 49 * (passes - 1) // 32
    assert passes_per_epoch(49, 64, 8) > passes  # a larger (global) batch needs more passes
