"""Caption options: tags kept, shuffled and dropped as asked, one of several captions per epoch, the same
variant whichever worker reads it, and training sees them."""

import numpy as np
import pytest

from ldmkit.config import load_config
from ldmkit.data.captions import CaptionConfig, CaptionedItems, caption_seed, vary_caption
from ldmkit.errors import ConfigError
from ldmkit.training.diffusion_task import DiffusionExperiment, training_dataset

TAGS = "sks dog, sitting, grass, sunny, red collar, looking left"


def _rng(i=0):
    return np.random.default_rng(caption_seed(0, 0, i))


def test_the_defaults_change_nothing():
    assert vary_caption(TAGS, CaptionConfig(), _rng()) == TAGS
    assert vary_caption("one\ntwo", CaptionConfig(), _rng()) == "one\ntwo"


def test_shuffling_keeps_the_first_tags_and_every_tag():
    config = CaptionConfig(shuffle_tags=True, keep_tags=1)
    variants = {vary_caption(TAGS, config, _rng(i)) for i in range(30)}
    assert len(variants) > 10  # the order moves …
    for variant in variants:
        tags = variant.split(", ")
        assert tags[0] == "sks dog" and sorted(tags) == sorted(TAGS.split(", "))  # … the trigger stays first


def test_tag_dropout_drops_about_its_rate_and_never_the_kept_tags():
    config = CaptionConfig(tag_dropout=0.3, keep_tags=1)
    lengths = [len(vary_caption(TAGS, config, _rng(i)).split(", ")) - 1 for i in range(2000)]
    assert np.mean(lengths) == pytest.approx(5 * 0.7, abs=0.1)  # 5 droppable tags, each kept with p = 0.7
    assert all(vary_caption(TAGS, config, _rng(i)).startswith("sks dog") for i in range(200))


def test_one_of_several_captions_per_epoch_and_the_same_one_for_the_same_key():
    items = [{"caption": "a dog\na puppy on grass\nmy dog", "image": None}]
    wrapped = CaptionedItems(items, CaptionConfig(pick_line=True), seed=3)
    by_epoch = [wrapped[(epoch, 0)]["caption"] for epoch in range(40)]
    assert set(by_epoch) == {"a dog", "a puppy on grass", "my dog"}
    assert [wrapped[(epoch, 0)]["caption"] for epoch in range(40)] == by_epoch  # a resumed epoch sees the same


def test_training_wraps_text_models_only(tmp_path):
    base = [f"autoencoder={tmp_path}", "data.source=synthetic", "data.resolution=16", "data.synthetic.count=8"]
    text = load_config(DiffusionExperiment, None, [*base, "conditioner.kind=text", "captions.shuffle_tags=true"],
                       group="diffusion")
    items = [{"caption": "a, b, c"}, {"caption": "d, e"}]
    wrapped = training_dataset(text, items)
    assert isinstance(wrapped, CaptionedItems) and wrapped.takes_epoch_keys
    assert sorted(wrapped[(1, 0)]["caption"].split(", ")) == ["a", "b", "c"]
    labels = load_config(DiffusionExperiment, None, [*base, "conditioner.kind=class", "conditioner.num_classes=4",
                                                     "captions.shuffle_tags=true"], group="diffusion")
    assert training_dataset(labels, items) is items  # no captions to vary
    with pytest.raises(ConfigError, match="tag_dropout"):
        load_config(DiffusionExperiment, None, [*base, "captions.tag_dropout=1.5"], group="diffusion")
