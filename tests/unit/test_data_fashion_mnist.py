import gzip
import struct

import numpy as np
import pytest

from ldmkit.data import DataConfig, build_dataset, class_names, num_classes
from ldmkit.data import fashion_mnist
from ldmkit.errors import AssetMissingError, ConfigError, DataError


def _write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_fashion(root, n_train=6, n_test=3):
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = np.zeros((n, 28, 28), np.uint8)
        for i in range(n):
            images[i, 4:24, 4:24] = 50 + 20 * i
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return root


def test_reads_idx_files_and_pads_to_32(tmp_path):
    root = make_fashion(tmp_path / "fm")
    cfg = DataConfig(source="fashion_mnist", path=str(root), channels=1, pad=2, background="black")
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert len(train) == 6 and len(test) == 3 and len(build_dataset(cfg, "all")) == 9
    sample = train[2]
    assert sample["image"].shape == (1, 32, 32) and sample["label"] == 2 and sample["caption"] == "pullover"
    image = sample["image"][0]
    assert (image[:2] == -1).all() and (image[:, :2] == -1).all()  # the 2 px padding is black
    assert abs(float(image[16, 16]) - ((50 + 40) / 127.5 - 1)) < 1e-5  # the original pixel, unscaled
    rgb = build_dataset(DataConfig(source="fashion_mnist", path=str(root), pad=2, background="black"))[0]["image"]
    assert rgb.shape == (3, 32, 32) and (rgb[0] == rgb[2]).all()
    assert num_classes(cfg) == 10 and class_names(cfg)[9] == "Ankle boot"


def test_default_places_and_missing_asset(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setenv("LDMKIT_HOME", str(tmp_path / "home"))
    with pytest.raises(AssetMissingError, match="ldm assets fetch fashion-mnist"):
        build_dataset(DataConfig(source="fashion_mnist"))
    make_fashion(tmp_path / "system", n_train=2)
    assert len(build_dataset(DataConfig(source="fashion_mnist"))) == 2
    make_fashion(tmp_path / "home" / "fashion-mnist", n_train=4)
    assert len(build_dataset(DataConfig(source="fashion_mnist"))) == 4  # $LDMKIT_HOME first


def test_damaged_files_are_one_line_errors(tmp_path):
    root = make_fashion(tmp_path / "fm")
    raw = gzip.open(root / "train-images-idx3-ubyte.gz").read()
    with gzip.open(root / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(raw[:-100])
    with pytest.raises(DataError, match="truncated"):
        build_dataset(DataConfig(source="fashion_mnist", path=str(root)))
    (root / "train-images-idx3-ubyte.gz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot be read|not an IDX"):
        build_dataset(DataConfig(source="fashion_mnist", path=str(root)))
    with pytest.raises(DataError, match="does not exist"):
        build_dataset(DataConfig(source="fashion_mnist", path=str(tmp_path / "nowhere")))


def test_labels_keep_only_the_named_classes_of_every_split(tmp_path):
    root = make_fashion(tmp_path / "fm", n_train=10, n_test=10)
    cfg = DataConfig(source="fashion_mnist", path=str(root), channels=1, pad=2, labels=(5, 7))
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert [item["label"] for item in train] == [5, 7] == [item["label"] for item in test]
    every = build_dataset(DataConfig(source="fashion_mnist", path=str(root), channels=1, pad=2), "train")
    assert (train[1]["image"] == every[7]["image"]).all()  # the item itself, not only its label
    assert num_classes(cfg) == 10  # a model of classes 5 and 7 keeps the embeddings of the other eight
    with pytest.raises(ConfigError, match=r"data.labels: \[12\] not among the source's 10 classes"):
        build_dataset(DataConfig(source="fashion_mnist", path=str(root), labels=(5, 12)))
    few = make_fashion(tmp_path / "few", n_train=3, n_test=3)  # labels 0, 1, 2 only
    with pytest.raises(DataError, match=r"data.labels=\[7\]: the train split has no item"):
        build_dataset(DataConfig(source="fashion_mnist", path=str(few), labels=(7,)))


def test_labels_with_a_latent_cache_are_refused_in_one_line():
    from ldmkit.config import load_config
    from ldmkit.training.diffusion_task import DiffusionExperiment

    with pytest.raises(ConfigError, match="data.labels picks items of image data, but latents=cache is a latent"):
        load_config(DiffusionExperiment, None, ["autoencoder=ae", "latents=cache", "data.labels=[1]"],
                    group="diffusion")
