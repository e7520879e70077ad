import re

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ldmkit.config import load_config
from ldmkit.data import DataConfig, SyntheticConfig, build_dataset, class_names, num_classes
from ldmkit.data.synthetic import RGB, SyntheticShapes, sample_scene, segmentation_classes
from ldmkit.errors import ConfigError

OBJ = r"an? (?:(small|medium|large) )?([a-z ]+?) (circle|square|triangle|star|diamond|hexagon|cross)"
CAPTION = re.compile(rf"^{OBJ}(?: (above|below|to the left of|to the right of) {OBJ})?(?: and .*)?$")


def _cfg(**syn):
    return DataConfig(resolution=syn.pop("resolution", 32), synthetic=SyntheticConfig(**syn))


def test_same_seed_same_scenes_other_seed_differs():
    a, b = SyntheticShapes(_cfg(seed=3)), SyntheticShapes(_cfg(seed=3))
    c = SyntheticShapes(_cfg(seed=4))
    for i in (0, 7):
        sa, sb = a[i], b[i]
        assert torch.equal(sa["image"], sb["image"]) and sa["caption"] == sb["caption"]
        assert torch.equal(sa["segmentation"], sb["segmentation"])
    assert any(not torch.equal(a[i]["image"], c[i]["image"]) for i in range(4))
    assert not torch.equal(a[0]["image"], a[1]["image"])


@pytest.mark.parametrize("resolution", [8, 17, 48])
def test_any_resolution_and_sample_structure(resolution):
    sample = SyntheticShapes(_cfg(resolution=resolution))[2]
    assert sample["image"].shape == (3, resolution, resolution) and sample["image"].dtype == torch.float32
    assert sample["image"].min() >= -1 and sample["image"].max() <= 1
    assert sample["segmentation"].shape == (resolution, resolution) and sample["segmentation"].dtype == torch.int64
    assert isinstance(sample["label"], int) and isinstance(sample["caption"], str)


def test_captions_labels_and_segmentation_match_the_drawing():
    cfg = _cfg(count=60, shapes=("circle", "square", "triangle", "star", "hexagon", "cross", "diamond"),
               colours=("red", "green", "blue", "orange"), max_objects=2, resolution=64)
    ds = SyntheticShapes(cfg)
    names, seg_names = class_names(cfg), segmentation_classes(cfg.synthetic)
    seen_relations = set()
    for i in range(len(ds)):
        sample, scene = ds[i], ds.scene(i)
        m = CAPTION.match(sample["caption"])
        assert m, sample["caption"]
        size, colour, shape = m.group(1), m.group(2), m.group(3)
        first = scene.objects[0]
        assert (size, colour, shape) == (first.size, first.colour, first.shape)
        assert names[sample["label"]] == f"{colour} {shape}"
        seg = sample["segmentation"]
        image = ((sample["image"] + 1) * 127.5).round()
        for obj in scene.objects:
            y, x = int(obj.cy * 64), int(obj.cx * 64)
            assert seg_names[int(seg[y, x])] == obj.shape
            assert torch.allclose(image[:, y, x], torch.tensor(RGB[obj.colour], dtype=torch.float32), atol=2)
        assert (seg == 0).any()  # some background
        if m.group(4):
            rel, other = m.group(4), scene.objects[1]
            assert (m.group(6), m.group(7)) == (other.colour, other.shape)
            seen_relations.add(rel)
            if rel == "above":
                assert first.cy < other.cy
            elif rel == "below":
                assert first.cy > other.cy
            elif rel == "to the left of":
                assert first.cx < other.cx
            else:
                assert first.cx > other.cx
        else:
            assert len(scene.objects) == 1
    assert len(seen_relations) >= 3


def test_many_objects_do_not_overlap_and_backgrounds_are_named():
    cfg = _cfg(count=20, min_objects=3, max_objects=4, backgrounds=("white", "pale blue"), resolution=32)
    ds = SyntheticShapes(cfg)
    for i in range(len(ds)):
        scene = ds.scene(i)
        assert 3 <= len(scene.objects) <= 4
        assert ds[i]["caption"].endswith(f"on a {scene.background} background")
        for a in scene.objects:
            for b in scene.objects:
                if a is not b:
                    assert np.hypot(a.cx - b.cx, a.cy - b.cy) > a.radius + b.radius


def test_easy_preset_is_single_crisp_object():
    cfg = load_config(DataConfig, "synthetic-easy", group="data")
    ds = build_dataset(cfg)
    assert num_classes(cfg) == 9
    for i in range(12):
        sample = ds[i]
        assert re.fullmatch(r"an? (red|green|blue) (circle|square|triangle)", sample["caption"])
        pixels = ((sample["image"] + 1) * 127.5).reshape(3, -1).T
        colour = RGB[sample["caption"].split()[1]]
        exact = (pixels - torch.tensor(colour)).abs().max(dim=1).values < 2
        assert exact.float().mean() > 0.12  # a big object of exactly its colour
        assert len(ds.scene(i).objects) == 1


def test_splits_are_disjoint_and_collate():
    cfg = _cfg(count=10)
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert len(train) == 10 and len(val) == 1 and len(build_dataset(cfg, "all")) == 11
    assert val.scene(0) == sample_scene(cfg.synthetic, 10)
    batch = next(iter(DataLoader(train, batch_size=4)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["segmentation"].shape == (4, 32, 32)
    assert batch["label"].dtype == torch.int64 and len(batch["caption"]) == 4


def test_gray_and_config_errors():
    gray = SyntheticShapes(DataConfig(channels=1, resolution=16))[0]
    assert gray["image"].shape == (1, 16, 16)
    with pytest.raises(ConfigError, match="flip"):
        DataConfig(flip=True)
    with pytest.raises(ConfigError, match="min_objects"):
        SyntheticConfig(min_objects=3, max_objects=2)
    with pytest.raises(ConfigError):
        load_config(DataConfig, None, ["synthetic.shapes=[circle, blob]"])
