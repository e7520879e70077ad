import json
import logging
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from ldmkit.data import DataConfig, build_dataset, class_names
from ldmkit.errors import DataError


def _img(path, colour, size=(20, 12), mode="RGB", fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, format=fmt)
    return path


def bomb_png(path, side=60000):
    """A valid PNG header that claims side x side pixels (the data is a few bytes)."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    _img(root / "cat" / "a.png", (255, 0, 0))
    (root / "cat" / "a.txt").write_text("a red  cat\n")
    _img(root / "cat" / "deep" / "b.jpg", (0, 255, 0), fmt="JPEG")
    _img(root / "dog" / "c.webp", (0, 0, 255), fmt="WEBP")
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (0, 0, 8, 16))  # left half opaque red, right half transparent
    (root / "dog").mkdir(exist_ok=True)
    rgba.save(root / "dog" / "d.png")
    _img(root / "e.png", 128, mode="L")
    (root / ".hidden").mkdir()
    _img(root / ".hidden" / "x.png", (1, 2, 3))
    return root


def _cfg(path, **kw):
    kw.setdefault("resolution", 16)
    kw.setdefault("val_fraction", 0.0)
    return DataConfig(source="folder", path=str(path), **kw)


def _by_key(ds):
    return {e.key: (i, e) for i, e in enumerate(ds.entries)}


def test_subfolder_labels_nested_captions_and_formats(folder):
    ds = build_dataset(_cfg(folder))
    keys = _by_key(ds)
    assert sorted(keys) == ["cat/a.png", "cat/deep/b.jpg", "dog/c.webp", "dog/d.png", "e.png"]
    assert ds.class_names == ["cat", "dog"] == class_names(_cfg(folder))
    labels = {k: ds[i]["label"] for k, (i, _) in keys.items()}
    assert labels == {"cat/a.png": 0, "cat/deep/b.jpg": 0, "dog/c.webp": 1, "dog/d.png": 1, "e.png": -1}
    assert ds[keys["cat/a.png"][0]]["caption"] == "a red cat"
    assert ds[keys["dog/c.webp"][0]]["caption"] == ""
    blue = ds[keys["dog/c.webp"][0]]["image"]
    assert blue.shape == (3, 16, 16) and blue[2].mean() > 0.9 and blue[0].mean() < -0.9
    gray = ds[keys["e.png"][0]]["image"]
    assert torch.allclose(gray[0], gray[1]) and torch.allclose(gray[1], gray[2])  # gray repeated to RGB


def test_alpha_is_composited_on_the_background(folder):
    for background, expected in (("white", 1.0), ("black", -1.0), ("#808080", 128 / 127.5 - 1)):
        ds = build_dataset(_cfg(folder, background=background))
        image = ds[_by_key(ds)["dog/d.png"][0]]["image"]  # [3, 16, 16]
        assert torch.allclose(image[:, :, 12], torch.full((3, 16), expected), atol=1e-4)  # transparent half
        assert torch.allclose(image[:, :, 2], torch.tensor([1.0, -1.0, -1.0])[:, None].expand(3, 16))


def test_resize_crop_pad_and_gray(folder):
    ds = build_dataset(_cfg(folder, resolution=8, crop="random", channels=1))
    sample = ds[_by_key(ds)["cat/a.png"][0]]
    assert sample["image"].shape == (1, 8, 8)
    padded = build_dataset(_cfg(folder, resolution=24, pad=4, background="black", resize=False))
    image = padded[_by_key(padded)["cat/a.png"][0]]["image"]  # 20x12 + 4 px border -> 28x20 -> padded to 28x24
    assert image.shape == (3, 24, 24)
    assert torch.all(image[:, :, :2] == -1)  # border is the background


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_manifest_labels_and_captions(folder, kind):
    rows = [{"file": "cat/a.png", "label": "tabby", "caption": "manifest caption"},
            {"file": "dog/c.webp", "label": "hound"},
            {"file": "e.png", "label": "tabby", "caption": "gray one"},
            {"file": "missing.png", "label": "hound"}]
    if kind == "csv":
        text = "file,label,caption\n" + "".join(f"{r['file']},{r['label']},{r.get('caption', '')}\n" for r in rows)
    else:
        text = "".join(json.dumps(r) + "\n" for r in rows)
    (folder / f"manifest.{kind}").write_text(text)
    ds = build_dataset(_cfg(folder, label_source="manifest", max_bad_fraction=0.5))
    keys = _by_key(ds)
    assert sorted(keys) == ["cat/a.png", "dog/c.webp", "e.png"]  # the manifest lists the data set
    assert ds.class_names == ["hound", "tabby"]
    assert ds[keys["cat/a.png"][0]] ["caption"] == "manifest caption"
    assert ds[keys["cat/a.png"][0]]["label"] == 1 and ds[keys["dog/c.webp"][0]]["label"] == 0
    assert ds[keys["dog/c.webp"][0]]["caption"] == ""
    assert any("missing.png" in name for name in ds.bad.bad)


def test_manifest_integer_labels(folder):
    (folder / "labels.jsonl").write_text('{"path": "cat/a.png", "label": 3}\n{"path": "e.png", "label": 0}\n')
    ds = build_dataset(_cfg(folder, label_source="manifest", manifest="labels.jsonl"))
    assert ds.class_names == ["0", "1", "2", "3"]
    assert sorted(ds[i]["label"] for i in range(len(ds))) == [0, 3]
    assert {ds[i]["caption"] for i in range(len(ds))} == {"a red cat", ""}  # .txt still used


def test_held_out_split_is_fixed_and_disjoint(tmp_path):
    for i in range(30):
        _img(tmp_path / "d" / f"{i:02d}.png", (i, i, i), size=(4, 4))
    cfg = _cfg(tmp_path / "d", val_fraction=0.1, split_seed=5)
    train, val, every = (build_dataset(cfg, s) for s in ("train", "val", "all"))
    t, v = {e.key for e in train.entries}, {e.key for e in val.entries}
    assert len(v) == 3 and len(t) == 27 and not t & v and t | v == {e.key for e in every.entries}
    assert {e.key for e in build_dataset(cfg, "val").entries} == v
    other = {e.key for e in build_dataset(_cfg(tmp_path / "d", val_fraction=0.1, split_seed=6), "val").entries}
    assert other != v


def test_bad_files_are_skipped_counted_and_named(folder, caplog):
    (folder / "zero.png").write_bytes(b"")
    good = folder / "cat" / "a.png"
    data = (folder / "big.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(data)
    (folder / "truncated.png").write_bytes(data.read_bytes()[:400])
    data.unlink()
    (folder / "text.jpg").write_text("this is not a jpeg")
    bomb_png(folder / "bomb.png")
    assert good.exists()
    caplog.set_level(logging.WARNING, logger="ldmkit.data")
    ds = build_dataset(_cfg(folder, max_bad_fraction=0.5))
    assert len(ds) == 6  # 5 good + the truncated one (its header is fine)
    assert {n.rsplit("/", 1)[-1] for n in ds.bad.bad} == {"zero.png", "text.jpg", "bomb.png"}
    samples = [ds[i] for i in range(len(ds))]
    assert all(s["image"].shape == (3, 16, 16) for s in samples)
    assert {n.rsplit("/", 1)[-1] for n in ds.bad.bad} == {"zero.png", "text.jpg", "bomb.png", "truncated.png"}
    assert "truncated.png" in caplog.text and "bomb.png" in caplog.text and "zero.png" in caplog.text
    assert "decompression bomb" in ds.bad.bad[str(folder / "bomb.png")]
    with pytest.raises(DataError, match="max_bad_fraction"):
        build_dataset(_cfg(folder, max_bad_fraction=0.2))


def test_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_dataset(_cfg(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        build_dataset(_cfg(tmp_path / "empty"))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_text("nope")
    with pytest.raises(DataError, match="no readable images"):
        build_dataset(_cfg(tmp_path / "junk", max_bad_fraction=1.0))
    with pytest.raises(DataError, match="manifest"):
        build_dataset(_cfg(tmp_path / "junk", label_source="manifest"))


def test_dataset_captions_reads_names_without_decoding_images():
    from ldmkit.data import dataset_captions

    class Named:
        def __len__(self):
            return 2

        def caption(self, i):
            return f"caption {i}"

        def __getitem__(self, i):
            raise AssertionError("images must not be decoded to list captions")

    class Plain:
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return {"caption": f"plain {i}"}

    assert dataset_captions(Named()) == ["caption 0", "caption 1"]
    assert dataset_captions(Plain()) == ["plain 0", "plain 1"]


def test_labels_keep_the_named_classes_of_a_folder_and_refuse_sources_without_labels(folder):
    from ldmkit.errors import ConfigError

    ds = build_dataset(_cfg(folder, labels=(1,)))
    assert sorted(e.key for e in ds.entries) == ["dog/c.webp", "dog/d.png"]
    assert [ds[i]["label"] for i in range(len(ds))] == [1, 1] and ds.class_names == ["cat", "dog"]
    assert len(ds.dims) == 2  # the probed sizes travel with their images (aspect-ratio buckets use them)
    with pytest.raises(ConfigError, match="data.labels: the synthetic source"):
        build_dataset(DataConfig(source="synthetic", labels=(0,)))
