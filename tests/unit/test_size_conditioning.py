"""Size micro-conditioning (SDXL §2.2-2.3): the data records where each training image came from, the
conditioner passes it on, the UNet embeds it, and sampling asks for the size and framing it wants."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ldmkit.conditioning import build_conditioner
from ldmkit.conditioning.config import ConditionerConfig
from ldmkit.conditioning.sizes import requested_sizes
from ldmkit.data import build_dataset
from ldmkit.data.buckets import BucketConfig
from ldmkit.data.config import DataConfig
from ldmkit.data.transforms import ImageTransform
from ldmkit.denoisers.unet import UNet
from ldmkit.denoisers.unet_config import UNetConfig
from ldmkit.errors import ConfigError, DataError

TINY_UNET = dict(in_channels=3, out_channels=3, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                 attention_resolutions=(), num_heads=2)


def _noise_image(height: int, width: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


def _resized(image: Image.Image, width: int, height: int) -> np.ndarray:
    return np.asarray(image.resize((width, height), Image.Resampling.BICUBIC))


def _pixels(tensor: torch.Tensor) -> np.ndarray:  # [3, H, W] in [-1, 1] → uint8 [H, W, 3]
    return np.rint((tensor.permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8)


# --- where an output image lies in its original -----------------------------------------------------------------

def test_a_centre_crop_records_the_original_size_and_the_crop_corner():
    image = _noise_image(20, 40)  # h 20, w 40 → resized to 16 x 32, the middle 16 columns kept
    out, placement = ImageTransform(DataConfig(resolution=16, crop="center")).placed(image)
    assert placement.original_size == (20, 40) and placement.crop_top_left == (0, 8)
    assert np.array_equal(_pixels(out), _resized(image, 32, 16)[:, 8:24])


@pytest.mark.parametrize("seed", range(6))
def test_a_random_crop_and_flip_record_the_corner_the_output_shows(seed):
    image = _noise_image(40, 24, seed)  # resized to 16 wide x 27 high
    torch.manual_seed(seed)
    out, placement = ImageTransform(DataConfig(source="folder", resolution=16, crop="random", flip=True)).placed(image)
    top, left = placement.crop_top_left
    resized = _resized(image, 16, 27)
    shown = _pixels(out)
    # The corner is where the output sits in the resized image, or in its mirror image when flipped.
    assert np.array_equal(shown, resized[top:top + 16, left:left + 16]) or \
        np.array_equal(shown, resized[:, ::-1][top:top + 16, left:left + 16])
    assert 0 <= top <= 27 - 16 and left == 0


def test_a_padded_small_image_has_a_negative_corner():
    out, placement = ImageTransform(DataConfig(resolution=16, resize=False)).placed(_noise_image(10, 12))
    assert placement.original_size == (10, 12) and placement.crop_top_left == (-3, -2)
    assert out.shape == (3, 16, 16)


def test_folder_samples_carry_their_geometry_in_bucket_batches(tmp_path):
    for i, (w, h) in enumerate([(64, 32)] * 3 + [(30, 30)] * 3):
        _noise_image(h, w, i).save(tmp_path / f"{i}.png")
    cfg = DataConfig(source="folder", path=str(tmp_path), resolution=32, val_fraction=0.0, label_source="none",
                     buckets=BucketConfig(enabled=True, step=8, min_side=16, max_side=64))
    dataset = build_dataset(cfg, "train")
    for i in range(len(dataset)):
        sample, (w, h) = dataset[i], dataset.dims[i]
        assert sample["original_size"].tolist() == [h, w]
        if (w, h) == (64, 32):  # to the 40x24 bucket: 48x24, the middle 40 columns
            assert sample["image"].shape[-2:] == (24, 40) and sample["crop_top_left"].tolist() == [0, 4]


# --- the conditioner and the UNet -----------------------------------------------------------------------------

def _batch() -> dict:
    return {"image": torch.zeros(2, 3, 24, 40), "label": torch.tensor([0, 1]),
            "original_size": torch.tensor([[32, 64], [500, 300]]), "crop_top_left": torch.tensor([[0, 4], [7, 0]])}


def test_the_conditioner_passes_the_geometry_on_and_keeps_it_for_the_null_branch():
    conditioner = build_conditioner(ConditionerConfig(kind="class", num_classes=2, embed_dim=4, drop_prob=0.0,
                                                      size_conditioning=True))
    cond = conditioner.encode(_batch())
    assert cond.sizes.tolist() == [[32, 64, 0, 4, 24, 40], [500, 300, 7, 0, 24, 40]]
    assert torch.equal(conditioner.unconditional_like(cond).sizes, cond.sizes)
    assert build_conditioner(ConditionerConfig(kind="class", num_classes=2, embed_dim=4)).encode(_batch()).sizes is None
    latents_only = {"latent": torch.zeros(2, 3, 6, 10), "label": torch.tensor([0, 1])}
    with pytest.raises(DataError, match="original size and crop"):
        conditioner.encode(latents_only)


def test_a_latent_cache_of_a_folder_keeps_each_image_s_geometry(tmp_path):
    from ldmkit.data.latents import LatentDataset
    from ldmkit.data.latent_encode import write_latent_cache

    for i, (w, h) in enumerate([(64, 32), (30, 50), (40, 40)]):
        _noise_image(h, w, i).save(tmp_path / f"{i}.png")
    cfg = DataConfig(source="folder", path=str(tmp_path), resolution=16, val_fraction=0.0, label_source="none")
    images = build_dataset(cfg, "train")
    cache = write_latent_cache(tmp_path / "latents", images, lambda x: (x[:, :, ::2, ::2], None), shard_size=2,
                               batch_size=2, meta={}, progress=False)
    latents = LatentDataset(cache)
    conditioner = build_conditioner(ConditionerConfig(kind="none", size_conditioning=True))
    for i in range(len(images)):
        assert latents[i]["original_size"].tolist() == images[i]["original_size"].tolist()
        assert latents[i]["crop_top_left"].tolist() == images[i]["crop_top_left"].tolist()
        assert latents[i]["output_size"].tolist() == [16, 16]
        batch = {k: (v[None] if isinstance(v, torch.Tensor) else [v]) for k, v in latents[i].items()}
        from_images = conditioner.encode({k: (v[None] if isinstance(v, torch.Tensor) else [v])
                                          for k, v in images[i].items()})
        assert torch.equal(conditioner.encode(batch).sizes, from_images.sizes)


def test_the_unet_size_route_starts_silent_and_then_tells_sizes_apart():
    torch.manual_seed(0)
    unet = UNet(UNetConfig(**TINY_UNET, size_embed=True)).eval()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 500])
    full = requested_sizes(2, 64, 64)  # [[64, 64, 0, 0, 64, 64]] * 2
    small = requested_sizes(2, 64, 64, original_size=(16, 16), crop_top_left=(8, 0))
    from ldmkit.conditioning.types import Conditioning

    with torch.no_grad():
        for name, p in unet.named_parameters():  # every layer trained (the zero-initialised ones too) but the last
            if not name.startswith("size_embedding.linear_2"):  # layer of the size route
                p.add_(0.2 * torch.randn_like(p))
        assert torch.equal(unet(x, t, Conditioning(sizes=full)), unet(x, t, Conditioning(sizes=small)))
        torch.nn.init.normal_(unet.size_embedding.linear_2.weight, std=0.5)
        assert not torch.allclose(unet(x, t, Conditioning(sizes=full)), unet(x, t, Conditioning(sizes=small)))
        with pytest.raises(ConfigError, match=r"size-conditioned: it needs Conditioning.sizes \[2, 6\]"):
            unet(x, t, Conditioning())
        plain = UNet(UNetConfig(**TINY_UNET)).eval()
        with pytest.raises(ConfigError, match="no size embedding"):
            plain(x, t, Conditioning(sizes=full))


def test_a_size_request_is_checked():
    assert requested_sizes(1, 32, 48).tolist() == [[32, 48, 0, 0, 32, 48]]
    with pytest.raises(ConfigError, match="original size must be two whole numbers"):
        requested_sizes(1, 32, 48, original_size=(0, 32))
    with pytest.raises(ConfigError, match="crop top-left must be two whole numbers"):
        requested_sizes(1, 32, 48, crop_top_left=(-1, 0))


# --- training and sampling a size-conditioned model -----------------------------------------------------------

@pytest.fixture(scope="module")
def size_conditioned_model(tmp_path_factory):
    from ldmkit.autoencoders import AutoencoderConfig, build_autoencoder, save_autoencoder
    from ldmkit.config import load_config
    from ldmkit.training.diffusion_task import DiffusionExperiment, DiffusionTask
    from ldmkit.training.loop import train

    root = tmp_path_factory.mktemp("sizes")
    for i, (w, h) in enumerate([(64, 32)] * 3 + [(32, 64)] * 3 + [(40, 40)] * 3):
        _noise_image(h, w, i).save(root / f"{i}.png")
    ae = save_autoencoder(root / "ae", build_autoencoder(AutoencoderConfig(kind="identity")))
    base = [f"autoencoder={ae}", "data.source=folder", f"data.path={root}", "data.resolution=32",
            "data.val_fraction=0.0", "data.label_source=none", "data.buckets.enabled=true", "data.buckets.step=8",
            "data.buckets.min_side=16", "data.buckets.max_side=64", "unet.model_channels=8", "unet.channel_mult=[1,2]",
            "unet.num_res_blocks=1", "unet.attention_resolutions=[]", "unet.num_heads=2", "train.batch_size=3",
            "train.steps=3", "train.device=cpu", "train.progress=false", "train.image_every=0", "ema_decay=0"]
    plain = load_config(DiffusionExperiment, None, [*base, f"train.out={root / 'plain'}"], group="diffusion")
    dataset = build_dataset(plain.data, split="train")
    plain_dir = train(DiffusionTask(plain, dataset, None), plain.train, dataset, plain)
    # Fine-tuning the plain model with size conditioning added: the new route starts at zero.
    sized = load_config(DiffusionExperiment, None, [*base, f"train.out={root / 'sized'}",
                                                    "conditioner.size_conditioning=true",
                                                    f"train.init_from={plain_dir}"], group="diffusion")
    return plain_dir, train(DiffusionTask(sized, dataset, None), sized.train, dataset, sized)


def test_a_model_fine_tuned_with_size_conditioning_samples_what_it_is_asked(size_conditioned_model, tmp_path):
    from ldmkit import load_pipeline
    from ldmkit.cli.main import main as ldm

    _, model_dir = size_conditioned_model
    pipe = load_pipeline(model_dir, device="cpu")
    assert pipe.unet.config.size_embed and pipe.model.takes_sizes
    assert pipe.unet.size_embedding.linear_2.weight.abs().sum() > 0  # trained from zero
    kwargs = dict(n=1, steps=2, sampler="ddim", guidance=1.0, seed=0, output="tensor", progress=False)
    full = pipe(**kwargs)
    assert torch.equal(pipe.size_conditions(original_size=(32, 32))(**kwargs), full)  # the default spelt out
    small = pipe.size_conditions(original_size=(8, 8), crop_top_left=(4, 4))(**kwargs)
    assert not torch.equal(small, full)
    with pytest.raises(ConfigError, match="original size"):
        pipe.size_conditions(original_size=(8, -8))
    assert ldm(["sample", "--model", str(model_dir), "--n", "1", "--steps", "2", "--guidance", "1", "--device",
                "cpu", "--original-size", "8", "8", "--crop-top-left", "4", "4", "--out", str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / "grid.png").is_file()


def test_a_plain_model_ignores_size_requests(size_conditioned_model):
    from ldmkit import load_pipeline

    plain_dir, _ = size_conditioned_model
    pipe = load_pipeline(plain_dir, device="cpu")
    kwargs = dict(n=1, steps=2, sampler="ddim", guidance=1.0, seed=0, output="tensor", progress=False)
    assert not pipe.model.takes_sizes
    assert torch.equal(pipe.size_conditions(original_size=(8, 8))(**kwargs),
                       pipe.size_conditions()(**kwargs))


def test_size_conditioning_is_refused_for_a_backbone_without_a_size_embedding(tmp_path):
    from ldmkit.autoencoders import AutoencoderConfig, build_autoencoder, save_autoencoder
    from ldmkit.config import load_config
    from ldmkit.training.diffusion_task import DiffusionExperiment, DiffusionTask

    ae = save_autoencoder(tmp_path / "ae", build_autoencoder(AutoencoderConfig(kind="identity")))
    experiment = load_config(DiffusionExperiment, None, [
        f"autoencoder={ae}", "backbone=dit", "conditioner.size_conditioning=true", "train.device=cpu",
        f"train.out={tmp_path / 'run'}"], group="diffusion")
    with pytest.raises(ConfigError, match="size_conditioning needs a backbone with a size embedding"):
        DiffusionTask(experiment, None, None).setup(torch.device("cpu"), experiment.train)
