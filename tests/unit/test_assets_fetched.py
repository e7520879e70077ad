"""Fetched assets keep their directory contracts (each test skips when its asset is absent)."""

import gzip
import json
import struct

import pytest
import torch
from safetensors.torch import load_file

from ldmkit.assets import require
from ldmkit.errors import AssetMissingError

pytestmark = pytest.mark.assets


def _asset(name: str):
    try:
        return require(name)
    except AssetMissingError as exc:
        pytest.skip(str(exc))


def test_lpips_files_hold_oihw_backbones_and_heads():
    root = _asset("lpips")
    alex = load_file(str(root / "alexnet.safetensors"))
    assert alex["features.0.weight"].shape == (64, 3, 11, 11) and alex["lin4.weight"].shape == (1, 256, 1, 1)
    assert all(alex[f"lin{k}.weight"].min() >= 0 for k in range(5))  # LPIPS heads are non-negative
    vgg = load_file(str(root / "vgg16.safetensors"))
    assert vgg["features.28.weight"].shape == (512, 512, 3, 3) and len(vgg) == 13 * 2 + 5


def test_efficientnet_lite0_keeps_original_keys():
    state = load_file(str(_asset("efficientnet-lite0") / "model.safetensors"))
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert 4.6e6 < sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k) < 4.8e6


def test_fashion_mnist_files():
    root = _asset("fashion-mnist")
    with gzip.open(root / "t10k-labels-idx1-ubyte.gz") as handle:
        assert struct.unpack(">II", handle.read(8)) == (2049, 10000)
    assert (root / "train-images-idx3-ubyte.gz").stat().st_size > 20e6


@pytest.mark.parametrize("name, suffix, count", [("fluent-emoji-3d", ".webp", 3391), ("twemoji", ".png", 3786),
                                                    ("noto-emoji", ".png", 3786)])
def test_emoji_images_and_names(name, suffix, count):
    root = _asset(name)
    images = list((root / "images").iterdir())
    assert len(images) == count and all(p.suffix == suffix for p in images)
    entries = json.loads((root / "emoji.json").read_text())
    names = {e["unified"].lower() for e in entries}
    names |= {v["unified"].lower() for e in entries for v in (e.get("skin_variations") or {}).values()}
    matched = sum(p.stem in names for p in images)
    assert matched >= 0.99 * count  # Fluent Emoji 3D: 3,374 of 3,391 have an entry


def test_minilm_loads_offline(monkeypatch):
    root = _asset("minilm")
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer = transformers.AutoTokenizer.from_pretrained(root)
    model = transformers.AutoModel.from_pretrained(root).eval()
    batch = tokenizer(["a red kangaroo"], return_tensors="pt")
    with torch.no_grad():
        states = model(**batch).last_hidden_state
    assert states.shape[0] == 1 and states.shape[-1] == 384
