"""Aspect-ratio buckets: the bucket set, nearest-ratio assignment, one bucket per batch in a seeded, resumable,
rank-disjoint order, images resized without distortion, and a training run on a folder of mixed shapes."""

import math

import numpy as np
import pytest
from PIL import Image

from ldmkit.data import DataConfig, build_dataset
from ldmkit.data.buckets import BucketConfig, BucketSampler, assign_buckets, make_buckets
from ldmkit.data.loader import build_dataloader
from ldmkit.errors import DataError


def test_buckets_hold_at_most_the_area_in_steps_and_cover_both_orientations():
    buckets = make_buckets(512, BucketConfig())
    assert (512, 512) in buckets and (256, 1024) in buckets and (1024, 256) in buckets
    assert all(h % 64 == 0 and w % 64 == 0 and h * w <= 512 * 512 and 256 <= min(h, w) for h, w in buckets)
    assert {(w, h) for h, w in buckets} == set(buckets)
    ratios = [h / w for h, w in buckets]
    assert ratios == sorted(ratios, reverse=True)
    with pytest.raises(DataError, match="no aspect-ratio bucket fits"):
        make_buckets(128, BucketConfig(min_side=256))


def test_each_image_goes_to_the_bucket_nearest_its_aspect_ratio():
    buckets = make_buckets(512, BucketConfig())
    chosen = [buckets[i] for i in assign_buckets([(1024, 512), (600, 600), (300, 900)], buckets)]
    assert chosen[0][1] > chosen[0][0] and chosen[1] == (512, 512) and chosen[2][0] > chosen[2][1]
    for (w, h), (bh, bw) in zip([(1024, 512), (300, 900)], [chosen[0], chosen[2]]):
        best = min(abs(math.log((hh / ww) / (h / w))) for hh, ww in buckets)
        assert abs(math.log((bh / bw) / (h / w))) == pytest.approx(best)


def test_the_sampler_deals_one_bucket_per_batch_seeded_resumable_and_disjoint():
    bucket_of = [0] * 10 + [1] * 7 + [2] * 3
    sampler = BucketSampler(bucket_of, 3, seed=1)
    order = sampler.epoch_indices(0)
    batches = order.reshape(-1, 3)
    assert all(len({bucket_of[i] for i in batch}) == 1 for batch in batches)
    assert len(set(order.tolist())) == len(order) == len(sampler) == 3 * (3 + 2 + 1)  # full batches: 3 + 2 + 1
    assert not np.array_equal(order, sampler.epoch_indices(1))
    assert np.array_equal(order, BucketSampler(bucket_of, 3, seed=1).epoch_indices(0))
    ranks = [BucketSampler(bucket_of, 3, seed=1, rank=r, world_size=2).epoch_indices(0) for r in (0, 1)]
    assert not set(ranks[0].tolist()) & set(ranks[1].tolist()) and len(ranks[0]) == len(ranks[1]) == 9
    assert len(BucketSampler(bucket_of, 3, seed=1, rank=1, world_size=2)) == 9
    resumed = BucketSampler(bucket_of, 3, seed=1)
    resumed.load_state_dict({"epoch": 0, "offset": 6})
    assert list(resumed) == order[6:].tolist()
    with pytest.raises(DataError, match="does not fall on a batch"):
        resumed.load_state_dict({"epoch": 0, "offset": 4})


@pytest.fixture
def mixed_folder(tmp_path):
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(64, 32)] * 6 + [(32, 64)] * 6 + [(40, 40)] * 6):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i:02d}.png")
    return tmp_path


def test_a_folder_of_mixed_shapes_loads_in_bucket_batches_without_distortion(mixed_folder):
    cfg = DataConfig(source="folder", path=str(mixed_folder), resolution=32, val_fraction=0.0, label_source="none",
                     buckets=BucketConfig(enabled=True, step=8, min_side=16, max_side=64))
    dataset = build_dataset(cfg, "train")
    loader, _ = build_dataloader(cfg, dataset, 3, seed=0, rank=0, world_size=1)
    shapes = [tuple(batch["image"].shape[-2:]) for batch in loader]
    assert len(shapes) == 6 and set(shapes) == {(24, 40), (40, 24), (32, 32)}  # three buckets, two batches each
    wide = dataset[[i for i, (w, h) in enumerate(dataset.dims) if w > h][0]]["image"]
    # A 64x32 image (h/w 0.5) goes to 40x24 (h/w 0.6; 48x16's 0.33 is further in log ratio), scaled to cover it
    # (64x32 → 48x24) and centre-cropped: no distortion.
    assert wide.shape[-2:] == (24, 40)
    square = DataConfig(source="folder", path=str(mixed_folder), resolution=32, val_fraction=0.0, label_source="none")
    assert build_dataset(square, "train")[0]["image"].shape[-2:] == (32, 32)  # off: square crops as before


def test_training_runs_on_bucket_batches(mixed_folder, tmp_path):
    from ldmkit.autoencoders import AutoencoderConfig, build_autoencoder, save_autoencoder
    from ldmkit.config import load_config
    from ldmkit.training.diffusion_task import DiffusionExperiment, DiffusionTask
    from ldmkit.training.loop import train

    ae = save_autoencoder(tmp_path / "ae", build_autoencoder(AutoencoderConfig(kind="identity")))
    experiment = load_config(DiffusionExperiment, None, [
        f"autoencoder={ae}", "data.source=folder", f"data.path={mixed_folder}", "data.resolution=32",
        "data.val_fraction=0.0", "data.label_source=none", "data.buckets.enabled=true", "data.buckets.step=8",
        "data.buckets.min_side=16", "data.buckets.max_side=64", "unet.model_channels=8", "unet.channel_mult=[1,2]",
        "unet.num_res_blocks=1", "unet.attention_resolutions=[]", "unet.num_heads=2", "train.batch_size=3",
        "train.steps=4", "train.device=cpu", "train.progress=false", "train.image_every=0",
        f"train.out={tmp_path / 'run'}"], group="diffusion")
    dataset = build_dataset(experiment.data, split="train")
    model_dir = train(DiffusionTask(experiment, dataset, None), experiment.train, dataset, experiment)
    assert (model_dir / "unet.safetensors").is_file()
