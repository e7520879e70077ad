"""The latent cache: written by position in shards, read back from disk a row at a time.

Reading from disk must give exactly the batches the in-memory cache gave (the data order comes from the
resumable sampler, posterior noise from the torch RNG); a resumed encoding must not read the images of shards
already finished; damaged shards and indexes are refused in one line, with nothing of the cache changed.
"""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from ldmkit.data.latents import LatentDataset, verify_latent_cache, write_latent_cache
from ldmkit.data.loader import build_dataloader
from ldmkit.errors import DataError

N, SHARD, BATCH = 20, 6, 4  # shards of 6, 6, 6, 2 latents; batches of 4 do not divide a shard
META = {"autoencoder": {"path": "/ae", "sha256": "abc", "scale_factor": 0.5, "shift_factor": None},
        "data": {"source": "test"}, "split": "train"}


class Images(Dataset):
    """N small images with labels and captions; records which positions were read."""

    def __init__(self, n=N, fail_at=None):
        self.n, self.fail_at, self.read = n, fail_at, []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == self.fail_at:
            raise KeyboardInterrupt  # an interrupted run
        self.read.append(i)
        image = torch.Generator().manual_seed(i)
        return {"image": torch.rand(3, 8, 8, generator=image) * 2 - 1, "label": i % 3,
                "caption": f"image {i}" + (" é" if i % 5 == 0 else "") if i % 7 else ""}


def encode(images):  # [B, 3, 8, 8] -> mean, std [B, 4, 4, 4]; the same per image whatever the batch
    mean = torch.nn.functional.avg_pool2d(images, 2).repeat(1, 2, 1, 1)[:, :4] * 0.5
    return mean, torch.sigmoid(mean) * 0.1


def _write(out, dataset=None, meta=META):
    return write_latent_cache(out, dataset or Images(), encode, shard_size=SHARD, batch_size=BATCH, meta=meta,
                              progress=False)


class InMemory(Dataset):
    """The cache as it was read before: every shard loaded, items indexed from the whole tensors."""

    def __init__(self, path):
        index = json.loads((path / "index.json").read_text())
        shards = [load_file(str(path / f"{name}.safetensors")) for name in index["shards"]]
        self.mean = torch.cat([s["mean"] for s in shards])
        self.std = torch.cat([s["std"] for s in shards])
        self.label = torch.cat([s["label"] for s in shards])
        self.captions = [Images()[i]["caption"] for i in range(N)]

    def __len__(self):
        return self.mean.shape[0]

    def __getitem__(self, i):
        latent = self.mean[i]
        latent = latent + self.std[i] * torch.randn_like(latent)
        return {"latent": latent, "label": int(self.label[i]), "caption": self.captions[i]}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("cache") / "latents")


def test_round_trip(cache):
    ds = LatentDataset(cache, sample_posterior=False)
    images = torch.stack([Images()[i]["image"] for i in range(N)])
    assert len(ds) == N and ds.index["latent_shape"] == [4, 4, 4] and ds.index["count"] == N
    assert ds.index["shards"] == [f"shard-0000{k}" for k in range(4)]
    assert [r["rows"] for r in ds.index["shard_records"]] == [6, 6, 6, 2]
    assert torch.equal(ds.mean, encode(images)[0]) and torch.equal(LatentDataset(cache).std, encode(images)[1])
    assert list(ds.captions) == [Images()[i]["caption"] for i in range(N)] == ds.captions[:]
    assert list(ds.labels) == [i % 3 for i in range(N)] and ds.label[-1] == (N - 1) % 3
    item = ds[7]
    assert torch.equal(item["latent"], encode(images[7:8])[0][0]) and (item["label"], item["caption"]) == (1, "")
    assert ds[-1]["caption"] == Images()[N - 1]["caption"]


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_from_disk_are_bitwise_those_from_memory(cache, workers):
    def epoch(dataset):
        torch.manual_seed(0)  # posterior noise: the torch RNG, as the training loop checkpoints it
        loader, _ = build_dataloader(None, dataset, 4, seed=3, rank=0, world_size=1, num_workers=workers)
        return list(loader)

    disk, memory = epoch(LatentDataset(cache)), epoch(InMemory(cache))
    assert len(disk) == N // 4
    for a, b in zip(disk, memory):
        assert torch.equal(a["latent"], b["latent"]) and torch.equal(a["label"], b["label"])
        assert a["caption"] == b["caption"]


def test_resumed_pass_yields_the_batches_left(cache):
    dataset = LatentDataset(cache, sample_posterior=False)
    whole, _ = build_dataloader(None, dataset, 3, seed=5, rank=0, world_size=1)
    expected = list(whole)
    first, position = build_dataloader(None, dataset, 3, seed=5, rank=0, world_size=1)
    got = [batch for _, batch in zip(range(2), first)]
    again, restored = build_dataloader(None, LatentDataset(cache, sample_posterior=False), 3, seed=5, rank=0,
                                       world_size=1)
    restored.load_state_dict(position.state_dict())
    got += list(again)
    assert len(got) == len(expected)
    assert all(torch.equal(a["latent"], b["latent"]) and a["caption"] == b["caption"] for a, b in zip(got, expected))


def _files(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if not p.name.startswith(".")}


def test_resume_reads_no_image_of_a_finished_shard(tmp_path, cache):
    out = tmp_path / "latents"
    with pytest.raises(KeyboardInterrupt):
        _write(out, Images(fail_at=14))  # shards 0 and 1 finished, shard 2 half read
    assert not (out / "index.json").exists() and (out / "shard-00001.done.json").exists()
    assert not (out / "shard-00002.safetensors").exists()
    finished = (out / "shard-00000.safetensors").stat().st_mtime_ns
    images = Images()
    _write(out, images)
    assert sorted(images.read) == list(range(12, N))  # only shards 2 and 3: no image of shards 0-1 opened
    assert (out / "shard-00000.safetensors").stat().st_mtime_ns == finished
    assert _files(out) == _files(cache)  # the same bytes as an encoding that was never interrupted
    images = Images()
    _write(out, images)  # a complete cache: nothing is read again
    assert images.read == [] and _files(out) == _files(cache)


def _copy(cache, tmp_path):
    import shutil

    return shutil.copytree(cache, tmp_path / "copy")


def _one_line(exc, *words):
    message = str(exc.value)
    assert len(message.splitlines()) == 1 and all(w in message for w in words), message


def test_a_truncated_shard_is_refused_and_kept(tmp_path, cache):
    out = _copy(cache, tmp_path)
    shard = out / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-40])
    kept = _files(out)
    with pytest.raises(DataError) as exc:
        LatentDataset(out)
    _one_line(exc, "shard-00001.safetensors", "rerun `ldm encode`")
    with pytest.raises(DataError) as exc:  # resuming does not overwrite it either
        _write(out, Images())
    _one_line(exc, "shard-00001.safetensors", "delete it")
    assert _files(out) == kept
    shard.unlink()  # as the message says: delete it and rerun
    _write(out, Images())
    assert _files(out) == _files(cache)


def test_an_index_that_does_not_match_is_refused(tmp_path, cache):
    out = _copy(cache, tmp_path)
    index = json.loads((out / "index.json").read_text())
    (out / "index.json").write_text(json.dumps(dict(index, count=N + 1)))
    with pytest.raises(DataError) as exc:
        LatentDataset(out)
    _one_line(exc, "index.json", "21", "rewrite")
    (out / "index.json").write_text("{not json")
    with pytest.raises(DataError) as exc:
        LatentDataset(out)
    _one_line(exc, "index.json", "cannot be read")
    _write(out, Images())  # rerunning rewrites the index from the shards' records
    assert _files(out) == _files(cache)


def test_other_settings_are_refused(tmp_path, cache):
    out = _copy(cache, tmp_path)
    kept = _files(out)
    with pytest.raises(DataError) as exc:
        _write(out, Images(), meta=dict(META, split="test"))
    _one_line(exc, str(out), "settings", "differ")
    moved = dict(META, autoencoder=dict(META["autoencoder"], path="/elsewhere"))  # moved, not changed: fine
    _write(out, Images(), meta=moved)
    assert _files(out).keys() == kept.keys()


def test_digests_are_verified(tmp_path, cache):
    out = _copy(cache, tmp_path)
    assert verify_latent_cache(out) == 4
    shard = out / "shard-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError) as exc:
        verify_latent_cache(out)
    _one_line(exc, "shard-00002.safetensors", "SHA-256")


def test_first_format_caches_are_still_read(tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    mean = torch.randn(5, 4, 2, 2)
    save_file({"mean": mean[:3], "label": torch.arange(3)}, str(out / "shard-00000.safetensors"))
    save_file({"mean": mean[3:], "label": torch.arange(2)}, str(out / "shard-00001.safetensors"))
    (out / "shard-00000.json").write_text(json.dumps(["a", "b", "c"]))
    (out / "shard-00001.json").write_text(json.dumps(["d", "e"]))
    (out / "index.json").write_text(json.dumps({"count": 5, "shards": ["shard-00000", "shard-00001"],
                                                "latent_shape": [4, 2, 2], "has_std": False}))
    ds = LatentDataset(out)
    assert len(ds) == 5 and list(ds.captions) == list("abcde") and list(ds.labels) == [0, 1, 2, 0, 1]
    assert torch.equal(torch.stack([ds[i]["latent"] for i in range(5)]), mean) and ds[4]["caption"] == "e"
    with pytest.raises(DataError) as exc:  # it cannot be resumed into: no plan says how it was made
        _write(out, Images())
    _one_line(exc, "older ldm encode", "another --out")


def test_tar_shards_are_encoded_in_stored_order_without_undecodable_samples(tmp_path):
    from tests.unit.test_data_shards import _cfg, _items

    from ldmkit.data import ShardDataset, write_shards

    write_shards(_items(9, broken={4}), tmp_path / "tars", per_shard=4)
    source = ShardDataset(_cfg(tmp_path / "tars", max_bad_fraction=0.5))  # shuffles when trained on
    out = write_latent_cache(tmp_path / "latents", source, lambda x: (x[:, :, ::2, ::2], None), shard_size=3,
                             batch_size=2, meta=META, progress=False)
    ds = LatentDataset(out)
    assert [r["rows"] for r in ds.index["shard_records"]] == [3, 2, 3]  # sample 4 (in shard 1) does not decode
    assert list(ds.labels) == [0, 1, 2, 3, 5, 6, 7, 8] and ds.captions[4] == "caption 5"
    assert not ds.index["has_std"] and ds[0]["latent"].shape == (3, 2, 2)


def test_verify_command(tmp_path, cache, capsys):
    from ldmkit.cli.main import main as ldm

    out = _copy(cache, tmp_path)
    assert ldm(["encode", "--verify", "--out", str(out)]) == 0 and "4 shards" in capsys.readouterr().out
    (out / "shard-00003.safetensors").write_bytes(b"x" * 10)
    assert ldm(["encode", "--verify", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "shard-00003.safetensors" in err
