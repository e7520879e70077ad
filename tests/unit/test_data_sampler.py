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

    def __init__(self, n: int = 10):
        self.n = n

    def __len__(self) -> int:
        return self.n

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
    again, restored = build_dataloader(None, _WhoLoads(), 4, num_workers=2)
    restored.load_state_dict({"epoch": 1, "offset": 4})  # second batch of the second epoch
    assert [b["index"].tolist() for b in again] == batches[3:4]


@pytest.mark.parametrize("drop_last", [True, False])
def test_workers_give_the_batches_of_the_one_pass_loader_across_epochs(drop_last):
    def batches(workers: int, epochs: int = 3) -> list[list[int]]:
        loader, _ = build_dataloader(None, Numbers(10), 4, seed=2, num_workers=workers, drop_last=drop_last)
        return [b["label"].tolist() for _ in range(epochs) for b in loader]

    assert batches(2) == batches(0)
    assert len(batches(0, epochs=1)) == (2 if drop_last else 3)


def test_workers_prepare_the_next_epochs_batch_before_this_one_ends():
    # One batch an epoch: a loader that starts each epoch afresh hands every batch to its first worker.
    loader, position = build_dataloader(None, _WhoLoads(4), 4, num_workers=2)
    pids = [int(b["pid"][0]) for _ in range(6) for b in loader]
    assert len(set(pids)) == 2 and pids[0] != pids[1]  # the workers take turns across epochs
    assert position.state_dict() == {"epoch": 6, "offset": 0}


def test_a_pass_left_early_goes_on_where_it_stopped_and_a_restored_position_restarts_there():
    whole, _ = build_dataloader(None, Numbers(12), 3, seed=4, num_workers=2)
    expected = [b["label"].tolist() for _ in range(2) for b in whole]  # 4 batches an epoch
    loader, position = build_dataloader(None, Numbers(12), 3, seed=4, num_workers=2)
    got = []
    for batch in loader:
        got.append(batch["label"].tolist())
        break  # the workers have prepared more than this one
    got += [b["label"].tolist() for _ in range(2) for b in loader]
    assert got == expected
    position.load_state_dict({"epoch": 0, "offset": 6})  # moved from outside: the stream starts again there
    assert [b["label"].tolist() for b in loader] == expected[2:4]
