import json

import pytest
import torch
from PIL import Image

from ldmkit.data import DataConfig, build_dataset, class_names
from ldmkit.data.emoji import normalize_codepoints
from ldmkit.errors import AssetMissingError, ConfigError, DataError

ENTRIES = [
    {"unified": "1F600", "name": "GRINNING FACE", "short_name": "grinning", "category": "Smileys & Emotion",
     "subcategory": "face-smiling"},
    {"unified": "1F44B", "name": "WAVING HAND SIGN", "category": "People & Body",
     "skin_variations": {"1F3FD": {"unified": "1F44B-1F3FD"}}},
    {"unified": "1F468-200D-1F9B3", "name": "MAN: WHITE HAIR", "category": "People & Body"},
    {"unified": "2764-FE0F", "non_qualified": "2764", "name": None, "short_name": "heavy_black_heart",
     "category": "Smileys & Emotion"},
    {"unified": "1F1EB-1F1F7", "name": "FRANCE FLAG", "category": "Flags"},
]


def make_emoji(root, suffix=".png", size=24):
    (root / "images").mkdir(parents=True)
    (root / "emoji.json").write_text(json.dumps(ENTRIES))
    names = ["1f600", "1f44b-1f3fd", "1f468-200d-1f9b3", "emoji_u2764", "1f1eb-1f1f7", "ffff0"]
    for k, name in enumerate(names):
        image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        image.paste((200, 10 * k, 0, 255), (4, 4, size - 4, size - 4))
        image.save(root / "images" / f"{name}{suffix}")
    return root


def test_captions_labels_and_alpha(tmp_path):
    root = make_emoji(tmp_path / "set", ".webp", size=32)
    cfg = DataConfig(source="emoji", path=str(root), resolution=16, val_fraction=0.0)
    ds = build_dataset(cfg)
    by_caption = {ds[i]["caption"]: ds[i] for i in range(len(ds))}
    assert set(by_caption) == {"grinning face", "waving hand sign: medium skin tone", "man: white hair",
                               "heavy black heart", "france flag"}  # the unmatched image is left out
    names = class_names(cfg)
    assert names[:2] == ["Smileys & Emotion", "People & Body"] and "Flags" in names
    assert names[by_caption["man: white hair"]["label"]] == "People & Body"
    assert names[by_caption["france flag"]["label"]] == "Flags"
    image = by_caption["grinning face"]["image"]
    assert image.shape == (3, 16, 16) and torch.allclose(image[:, 0, 0], torch.ones(3))  # white behind alpha


def test_held_out_split_and_default_place(tmp_path, monkeypatch):
    monkeypatch.setenv("LDMKIT_HOME", str(tmp_path))
    with pytest.raises(AssetMissingError, match="ldm assets fetch twemoji"):
        build_dataset(DataConfig(source="emoji", emoji_set="twemoji"))
    make_emoji(tmp_path / "twemoji")
    cfg = DataConfig(source="emoji", emoji_set="twemoji", resolution=8, val_fraction=0.2)
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    t, v = {e.key for e in train.entries}, {e.key for e in val.entries}
    assert len(v) == 1 and len(t) == 4 and not t & v


def test_layout_errors(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(DataError, match="emoji.json and images/"):
        build_dataset(DataConfig(source="emoji", path=str(tmp_path / "x")))
    root = make_emoji(tmp_path / "y")
    (root / "emoji.json").write_text("{not json")
    with pytest.raises(DataError, match="emoji.json"):
        build_dataset(DataConfig(source="emoji", path=str(root)))


def test_normalize_codepoints():
    assert normalize_codepoints("1F468-200D-1F9B3") == "1f468-200d-1f9b3"
    assert normalize_codepoints("emoji_u2764_fe0f") == "2764"


def test_described_captions_add_subcategory_and_category(tmp_path):
    root = make_emoji(tmp_path / "set")
    ds = build_dataset(DataConfig(source="emoji", path=str(root), resolution=8, val_fraction=0.0,
                                  emoji_captions="described"))
    captions = {e.key: e.caption for e in ds.entries}
    assert captions["1f600"] == "grinning face, face smiling, smileys and emotion"
    assert captions["1f44b-1f3fd"] == "waving hand sign: medium skin tone, people and body"  # no subcategory


def test_mixed_sets_prefix_their_style_and_hold_out_an_emoji_from_every_set(tmp_path, monkeypatch):
    monkeypatch.setenv("LDMKIT_HOME", str(tmp_path))
    make_emoji(tmp_path / "twemoji")
    make_emoji(tmp_path / "noto-emoji")
    cfg = DataConfig(source="emoji", emoji_set="twemoji+noto-emoji", resolution=8, val_fraction=0.4)
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert len(train) + len(val) == 10  # five matched emoji in each of the two sets
    for ds in (train, val):
        for entry in ds.entries:
            style = {"twemoji": "a flat emoji of ", "noto-emoji": "a cartoon emoji of "}[entry.key.split("/")[0]]
            assert entry.caption.startswith(style)
    emoji = lambda ds: {e.key.split("/")[1] for e in ds.entries}  # noqa: E731
    assert len(emoji(val)) == 2 and not emoji(train) & emoji(val)  # 40% of the five emoji, in both sets
    assert len(val) == 4
    # one category table for the mix: an emoji has the same label in both sets
    labels = {}
    for entry in train.entries + val.entries:
        assert labels.setdefault(entry.key.split("/")[1], entry.label) == entry.label
    assert class_names(cfg)[labels["1f1eb-1f1f7"]] == "Flags"


def test_mixed_sets_refuse_a_single_path_and_unknown_sets(tmp_path):
    with pytest.raises(DataError, match="path=null"):
        build_dataset(DataConfig(source="emoji", emoji_set="twemoji+noto-emoji", path=str(make_emoji(tmp_path))))
    with pytest.raises(ConfigError, match="did you mean 'twemoji'"):
        DataConfig(source="emoji", emoji_set="fluent-emoji-3d+twemoj")
    with pytest.raises(ConfigError, match="twice"):
        DataConfig(source="emoji", emoji_set="twemoji+twemoji")
