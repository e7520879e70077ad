import io
import json
from collections import Counter

import pytest
from PIL import Image

from ldmkit.data import DataConfig, ShardDataset, build_dataloader, build_dataset, write_shards
from ldmkit.errors import DataError

N = 23


def _png(value):
    buf = io.BytesIO()
    Image.new("RGB", (6, 6), (value, 255 - value, 0)).save(buf, format="PNG")
    return buf.getvalue()


def _items(n=N, broken=()):
    for i in range(n):
        files = {"png": _png(i * 10) if i not in broken else _png(0)[:30]}
        if i % 3 == 0:
            files["json"] = json.dumps({"caption": f"json {i}", "label": i}).encode()
        else:
            files["txt"] = f"caption {i}".encode()
            files["cls"] = str(i).encode()
        yield f"s{i:03d}", files


@pytest.fixture
def shard_dir(tmp_path):
    paths = write_shards(_items(), tmp_path / "shards", per_shard=5)
    assert len(paths) == 5
    return tmp_path / "shards"


def _cfg(path, **kw):
    return DataConfig(source="shards", path=str(path), resolution=4, val_fraction=kw.pop("val_fraction", 0.0), **kw)


def test_round_trip_in_stored_order(shard_dir):
    ds = ShardDataset(_cfg(shard_dir), shuffle=False)
    samples = list(ds)
    assert [s["label"] for s in samples] == list(range(N))
    assert samples[3]["caption"] == "json 3" and samples[4]["caption"] == "caption 4"
    red = (samples[7]["image"][0].mean() + 1) * 127.5
    assert abs(red - 70) < 2 and samples[7]["image"].shape == (3, 4, 4)
    assert len(ds) == N


def test_globs_and_single_files(shard_dir):
    assert len(ShardDataset(_cfg(shard_dir / "shard-00000[0-1].tar"))) == 10
    assert len(ShardDataset(_cfg(shard_dir / "shard-000004.tar"))) == 3
    assert isinstance(build_dataset(_cfg(shard_dir)), ShardDataset)


def test_epoch_order_is_seeded(shard_dir):
    ds = ShardDataset(_cfg(shard_dir), seed=1)
    assert ds.keys(0) == ShardDataset(_cfg(shard_dir), seed=1).keys(0)
    assert ds.keys(0) != ds.keys(1) and sorted(ds.keys(0)) == sorted(ds.keys(1))
    assert ds.keys(0) != ShardDataset(_cfg(shard_dir), seed=2).keys(0)


@pytest.mark.parametrize("workers", [0, 2])
def test_ranks_and_workers_cover_everything_once(shard_dir, workers):
    world, batch = 3, 2
    seen = []
    for rank in range(world):
        ds = ShardDataset(_cfg(shard_dir))
        loader, position = build_dataloader(ds.cfg, ds, batch, seed=4, rank=rank, world_size=world,
                                            num_workers=workers, drop_last=False)
        labels = [int(x) for b in loader for x in b["label"]]
        expected = [int(k[1:]) for k in ds.keys(0)]
        assert labels == expected  # the loader yields exactly the rank's order, workers interleaved by batch
        assert position.state_dict() == {"epoch": 1, "offset": 0}
        seen += labels
    counts = Counter(seen)
    assert max(counts.values()) == 1 and len(seen) == N - N % world  # cut to a multiple of world_size


def test_resume_skips_the_consumed_samples(shard_dir):
    ds = ShardDataset(_cfg(shard_dir))
    loader, position = build_dataloader(ds.cfg, ds, 4, seed=0, rank=1, world_size=2, drop_last=False)
    position.set_epoch(2)
    full = [int(x) for b in loader for x in b["label"]]
    position.set_epoch(2)
    taken = []
    for n, b in enumerate(loader):
        taken += b["label"].tolist()
        if n == 1:
            break
    state = position.state_dict()
    assert state == {"epoch": 2, "offset": 8}
    fresh = ShardDataset(_cfg(shard_dir))
    loader2, position2 = build_dataloader(fresh.cfg, fresh, 4, seed=0, rank=1, world_size=2, drop_last=False)
    position2.load_state_dict(state)
    position2.set_epoch(2)  # a training loop's set_epoch keeps the restored offset
    rest = [int(x) for b in loader2 for x in b["label"]]
    assert taken + rest == full


def test_bad_samples_and_held_out_split(shard_dir, tmp_path, caplog):
    write_shards(_items(10, broken={4}), tmp_path / "b", per_shard=10)
    ds = ShardDataset(_cfg(tmp_path / "b", max_bad_fraction=0.2), shuffle=False)
    assert [s["label"] for s in ds] == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert list(ds.bad.bad) == ["shard-000000.tar:s004.png"] and "s004" in caplog.text
    with pytest.raises(DataError, match="max_bad_fraction"):
        list(ShardDataset(_cfg(tmp_path / "b", max_bad_fraction=0.05)))
    train = ShardDataset(_cfg(shard_dir, val_fraction=0.3), shuffle=False)
    val = ShardDataset(_cfg(shard_dir, val_fraction=0.3), "val", shuffle=False)
    t, v = set(train.keys()), set(val.keys())
    assert v and t and not t & v and len(t | v) == N


def test_shard_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ShardDataset(_cfg(tmp_path / "none"))
    (tmp_path / "e").mkdir()
    with pytest.raises(DataError, match="no .tar shards"):
        ShardDataset(_cfg(tmp_path / "e"))
    (tmp_path / "e" / "x.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(DataError):
        ShardDataset(_cfg(tmp_path / "e"))
