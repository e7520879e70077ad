"""Inpainting training masks drawn per item in the data pipeline: a pure function of (seed, epoch, item index),
whatever the number of workers, across epochs and across a mid-epoch resume; and training takes them from the batch."""

import pytest
import torch
from torch.utils.data import Dataset, IterableDataset

from ldmkit.cli.main import main as ldm
from ldmkit.conditioning import ConcatConfig, ConditionerConfig
from ldmkit.conditioning import concat as concat_module
from ldmkit.data.masks import MaskConfig, mask_from_seed, sample_mask
from ldmkit.config import load_config
from ldmkit.data import ResumableSampler, build_dataloader
from ldmkit.data.latents import LatentDataset
from ldmkit.data.masked import MaskedItems, item_mask_seed
from ldmkit.errors import ConfigError
from ldmkit.training.diffusion_task import DiffusionExperiment, training_dataset

SIZE = 16
MASKS = MaskConfig(coverage=(0.1, 0.5))


class Tiles(Dataset):
    """Blank images that say their index."""

    def __init__(self, n: int = 10):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"image": torch.zeros(3, SIZE, SIZE), "index": i}


def _expected(seed: int, epoch: int, index: int, config: MaskConfig = MASKS) -> torch.Tensor:
    return mask_from_seed(SIZE, SIZE, config, item_mask_seed(seed, epoch, index))[None]  # [1, H, W]


def _masks(loader, epochs: int, stop_after: int | None = None) -> dict[tuple[int, int], torch.Tensor]:
    """{(epoch, index): mask} of the batches ``loader`` yields over ``epochs`` passes (``stop_after`` batches in all)."""
    seen: dict[tuple[int, int], torch.Tensor] = {}
    batches = 0
    for _ in range(epochs):
        epoch = loader.state_dict()["epoch"]
        for batch in loader:
            assert batch["mask"].shape == (batch["index"].shape[0], 1, SIZE, SIZE)
            for index, mask in zip(batch["index"].tolist(), batch["mask"]):
                seen[epoch, index] = mask
            batches += 1
            if batches == stop_after:
                return seen
    return seen


def test_mask_from_seed_is_sample_mask_with_a_seeded_generator():
    mask = mask_from_seed(24, 20, MASKS, 11)
    assert mask.shape == (24, 20) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(mask, sample_mask(24, 20, MASKS, torch.Generator().manual_seed(11))[0])
    assert not torch.equal(mask, mask_from_seed(24, 20, MASKS, 12))


def test_item_seed_depends_on_seed_epoch_and_index():
    seeds = {item_mask_seed(s, e, i) for s in range(2) for e in range(3) for i in range(4)}
    assert len(seeds) == 24 and item_mask_seed(1, 2, 3) == item_mask_seed(1, 2, 3)


def test_epoch_keyed_sampler_yields_epoch_and_index_and_keeps_its_position():
    plain = ResumableSampler(6, seed=2)
    keyed = ResumableSampler(6, seed=2, epoch_keys=True)
    assert list(keyed) == [(0, i) for i in plain]
    keyed.load_state_dict({"epoch": 3, "offset": 2})
    plain.load_state_dict({"epoch": 3, "offset": 2})
    assert list(keyed) == [(3, i) for i in plain] and len(list(keyed)) == 4


def test_same_masks_with_zero_and_two_workers_and_new_masks_each_epoch():
    runs = []
    for workers in (0, 2):
        loader, _ = build_dataloader(None, MaskedItems(Tiles(), MASKS, seed=3), 2, seed=3, num_workers=workers)
        runs.append(_masks(loader, epochs=2))
    assert runs[0].keys() == runs[1].keys() == {(e, i) for e in range(2) for i in range(10)}
    for key, mask in runs[0].items():
        assert torch.equal(mask, runs[1][key])
        assert torch.equal(mask, _expected(3, *key))  # a pure function of (seed, epoch, index)
    assert all(not torch.equal(runs[0][0, i], runs[0][1, i]) for i in range(10))  # each epoch draws anew
    other_seed, _ = build_dataloader(None, MaskedItems(Tiles(), MASKS, seed=4), 2, seed=3)
    assert not torch.equal(_masks(other_seed, 1)[0, 0], runs[0][0, 0])


def test_resuming_mid_epoch_gives_the_masks_of_the_uninterrupted_run():
    whole, _ = build_dataloader(None, MaskedItems(Tiles(), MASKS, seed=1), 2, seed=1)
    expected = _masks(whole, epochs=2)
    first, position = build_dataloader(None, MaskedItems(Tiles(), MASKS, seed=1), 2, seed=1)
    seen = _masks(first, epochs=1, stop_after=3)
    state = position.state_dict()
    assert state == {"epoch": 0, "offset": 6}
    resumed, _ = build_dataloader(None, MaskedItems(Tiles(), MASKS, seed=1), 2, seed=1, num_workers=2)
    resumed.load_state_dict(state)
    seen.update(_masks(resumed, epochs=2))
    assert seen.keys() == expected.keys()
    assert all(torch.equal(seen[key], expected[key]) for key in expected)


def test_items_with_their_own_mask_keep_it():
    class WithMasks(Tiles):
        def __getitem__(self, i):
            return dict(super().__getitem__(i), mask=torch.ones(1, SIZE, SIZE))

    assert torch.equal(MaskedItems(WithMasks(), MASKS)[(1, 4)]["mask"], torch.ones(1, SIZE, SIZE))
    assert torch.equal(MaskedItems(Tiles(), MASKS, seed=2)[5]["mask"], _expected(2, 0, 5))  # plain index: epoch 0


def _experiment(kind: str = "masked_image") -> DiffusionExperiment:
    concat = ConcatConfig(kind=kind, downsample_factor=2, latent_channels=3, masks=MASKS)
    return DiffusionExperiment(autoencoder="ae", conditioner=ConditionerConfig(drop_prob=0.0, concat=concat))


def test_training_dataset_adds_masks_only_where_it_can():
    tiles = Tiles()
    wrapped = training_dataset(_experiment(), tiles)
    assert isinstance(wrapped, MaskedItems) and wrapped.config == MASKS
    assert training_dataset(_experiment("none"), tiles) is tiles

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(())

    stream = Stream()
    assert training_dataset(_experiment(), stream) is stream  # an unknown stream: masks are drawn in the trainer
    with pytest.raises(ConfigError, match="set latents: null"):
        training_dataset(_experiment(), LatentDataset.__new__(LatentDataset))


SYNTHETIC = ["data.source=synthetic", "data.resolution=16", "data.synthetic.count=16", "data.synthetic.supersample=1",
             "data.synthetic.shapes=[circle, square]", "data.synthetic.max_objects=1"]
TRAIN = ["train.device=cpu", "train.progress=false", "train.image_every=0", "train.log_every=1", "train.batch_size=4",
         "train.checkpoint_every=0", "train.steps=2", "train.warmup_steps=0", "train.num_workers=2", "train.seed=5"]
TINY_UNET = ["unet.model_channels=16", "unet.channel_mult=[1, 2]", "unet.attention_resolutions=[2]",
             "unet.num_head_channels=8", "unet.num_res_blocks=1"]


def test_inpaint_training_takes_the_masks_the_data_drew(tmp_path, monkeypatch, make_first_stage,
                                                        recording_diffusion_losses):
    def no_drawing(*args, **kwargs):
        raise AssertionError("the training process drew masks")

    reached: list[torch.Tensor] = []
    original = concat_module.masked_image_concat

    def recording(image, mask, encode):
        reached.append(mask.detach().cpu())
        return original(image, mask, encode)

    monkeypatch.setattr(concat_module, "random_masks", no_drawing)
    monkeypatch.setattr(concat_module, "masked_image_concat", recording)
    overrides = [f"autoencoder={make_first_stage((1, 1, 2))}", f"train.out={tmp_path}", *SYNTHETIC, *TRAIN,
                 *TINY_UNET]
    with recording_diffusion_losses() as losses:
        assert ldm(["train", "diffusion", "--config", "fluent-emoji-64-inpaint", *overrides]) == 0
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    config = load_config(DiffusionExperiment, "fluent-emoji-64-inpaint", overrides, group="diffusion")
    order = ResumableSampler(16, seed=5, drop_last=True).epoch_indices(0)[:8]
    expected = torch.stack([mask_from_seed(16, 16, config.conditioner.concat.masks, item_mask_seed(5, 0, i))
                            for i in order])[:, None]  # [8, 1, 16, 16]
    assert torch.equal(torch.cat(reached), expected)


def test_streamed_shards_draw_the_same_masks_in_their_workers(tmp_path):
    import io
    from dataclasses import replace

    from PIL import Image

    from ldmkit.data import DataConfig, ShardDataset, write_shards

    def items():
        for i in range(12):
            buffer = io.BytesIO()
            Image.new("RGB", (SIZE, SIZE), (i * 20, 0, 0)).save(buffer, format="PNG")
            yield f"s{i:02d}", {"png": buffer.getvalue(), "cls": str(i).encode()}

    write_shards(items(), tmp_path / "shards", per_shard=5)
    cfg = DataConfig(source="shards", path=str(tmp_path / "shards"), resolution=SIZE, val_fraction=0.0)
    experiment = _experiment()
    experiment = replace(experiment, train=replace(experiment.train, seed=3))

    def run(workers: int) -> dict[tuple[int, int], torch.Tensor]:
        dataset = training_dataset(experiment, ShardDataset(cfg))
        assert dataset.item_hook is not None
        loader, _ = build_dataloader(cfg, dataset, batch_size=4, seed=1, num_workers=workers)
        seen = {}
        for _ in range(2):
            epoch = loader.state_dict()["epoch"]
            for batch in loader:
                for label, mask in zip(batch["label"].tolist(), batch["mask"]):
                    seen[epoch, label] = mask  # the label is the sample's stored-order index here
        return seen

    inline, workers = run(0), run(2)
    assert inline.keys() == workers.keys() and len(inline) == 24
    for (epoch, index), mask in inline.items():
        assert torch.equal(mask, workers[epoch, index])
        assert torch.equal(mask, _expected(3, epoch, index))
    assert any(not torch.equal(inline[0, i], inline[1, i]) for i in range(12))
