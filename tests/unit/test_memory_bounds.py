"""Sizes and counts that would need more memory than a machine has are refused in one line, before anything
large is allocated: sampling sizes, the latent size of a model directory, manifest class counts, long thin
images, the data resolution."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from ldmkit.autoencoders.build import build_autoencoder, load_autoencoder, save_autoencoder
from ldmkit.autoencoders.config import AutoencoderConfig
from ldmkit.cli.main import main as ldm
from ldmkit.conditioning import ConcatConfig, ConditionerConfig, build_conditioner
from ldmkit.config import from_dict
from ldmkit.data.check import check_data
from ldmkit.data.config import DataConfig
from ldmkit.data.folder import MAX_CLASSES, folder_dataset
from ldmkit.data.images import BadImage
from ldmkit.data.transforms import ImageTransform
from ldmkit.denoisers import UNet, UNetConfig
from ldmkit.diffusion.schedules import NoiseSchedule, ScheduleConfig
from ldmkit.errors import CheckpointError, ConfigError, DataError
from ldmkit.pipelines import UpscalePipeline, load_pipeline
from ldmkit.pipelines import memory
from ldmkit.model import LatentDiffusionModel

FAST = {"steps": 1, "sampler": "ddim"}


def _save_model(root, name, cond_cfg):
    """A tiny untrained LDM directory (identity first stage, 16x16 latents)."""
    torch.manual_seed(0)
    conditioner = build_conditioner(cond_cfg)
    unet = UNet(UNetConfig(in_channels=3, out_channels=3, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                           attention_resolutions=(), num_heads=2, vector_dim=cond_cfg.vector_dim,
                           concat_channels=conditioner.concat_channels))
    model = LatentDiffusionModel(unet=unet, schedule=NoiseSchedule(ScheduleConfig()), conditioner=conditioner,
                                 autoencoder=load_autoencoder(root / "ae"), latent_size=(16, 16),
                                 autoencoder_source=Path(root / "ae"))
    return model.save(root / name)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    ae_cfg = AutoencoderConfig(kind="identity")
    save_autoencoder(root / "ae", build_autoencoder(ae_cfg), ae_cfg)
    return {
        "uncond": _save_model(root, "uncond", ConditionerConfig(kind="none")),
        "upscale": _save_model(root, "upscale", ConditionerConfig(concat=ConcatConfig(
            kind="low_res", downsample_factor=1, latent_channels=3, low_res_factor=2))),
    }


@pytest.fixture(scope="module")
def pipe(model_dirs):
    return load_pipeline(model_dirs["uncond"], device="cpu")


def _one_line_error(capsys, code):
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


# ----- sampling sizes ---------------------------------------------------------------------------------
def test_sample_command_refuses_a_size_beyond_memory_with_an_estimate(tmp_path, capsys, model_dirs):
    out = tmp_path / "samples"
    code = ldm(["sample", "--model", str(model_dirs["uncond"]), "--height", "100000", "--width", "100000",
                "--steps", "1", "--device", "cpu", "--out", str(out)])
    err = _one_line_error(capsys, code)
    assert "100000x100000 pixels would need about" in err and "TB of memory" in err
    assert not (out / "settings.json").exists()


def test_the_estimate_grows_with_size_and_batch_and_refuses_before_allocating(pipe, monkeypatch):
    unet, ae = pipe.unet.config, pipe.autoencoder.config
    small = memory.sampling_bytes(unet, ae, 16, 16, batch=1, count=1)
    assert memory.sampling_bytes(unet, ae, 32, 32, batch=1, count=1) > 3 * small
    assert memory.sampling_bytes(unet, ae, 16, 16, batch=4, count=4) > 3 * small
    monkeypatch.setattr(memory, "device_memory_bytes", lambda device: 2 * small)
    pipe(n=1, **FAST, output="tensor")  # fits
    allocated = []
    monkeypatch.setattr(torch, "randn", lambda *a, **k: allocated.append(a) or pytest.fail("noise was drawn"))
    with pytest.raises(ConfigError, match=r"4 images of 16x16 pixels would need about .* ask for a smaller size"):
        pipe(n=4, batch_size=4, **FAST)
    assert not allocated


def test_img2img_and_interpolation_check_memory_too(pipe, monkeypatch):
    from ldmkit.pipelines import ImageToImagePipeline

    monkeypatch.setattr(memory, "device_memory_bytes", lambda device: 1)
    with pytest.raises(ConfigError, match="1 image of 16x16 pixels would need"):
        ImageToImagePipeline.from_pipeline(pipe)(torch.zeros(1, 3, 16, 16), **FAST)
    with pytest.raises(ConfigError, match="3 images of 16x16 pixels would need"):
        pipe.interpolate(frames=3, **FAST)


def test_upscale_suggests_tiles_and_tiles_need_less(model_dirs, monkeypatch):
    up = UpscalePipeline.load(model_dirs["upscale"], device="cpu")
    unet, ae = up.unet.config, up.autoencoder.config
    whole = memory.sampling_bytes(unet, ae, 512, 512, batch=1, count=1)
    tiled = memory.sampling_bytes(unet, ae, 512, 512, batch=1, count=1, tile=(16, 16), tile_batch=1)
    assert tiled < whole / 4
    monkeypatch.setattr(memory, "device_memory_bytes", lambda device: (whole + tiled) // 2)
    with pytest.raises(ConfigError, match=r"upscale in tiles \(--tile auto\)"):
        up(torch.zeros(1, 3, 256, 256), **FAST)


# ----- a model directory's latent size ----------------------------------------------------------------
@pytest.mark.parametrize("size", [[100000.0, 100000.0], [16], "16x16", [0, 16], [float("nan"), 16]])
def test_a_huge_or_malformed_latent_size_is_refused_when_the_model_is_loaded(tmp_path, model_dirs, size):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(model_dirs["uncond"], model)
    record = json.loads((model / "config.json").read_text())
    record["extra"]["latent_size"] = size
    (model / "config.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"latent_size .* each 1\.\.2048"):
        load_pipeline(model, device="cpu")


# ----- data ----------------------------------------------------------------------------------------------
def _png(path, size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 30, 30)).save(path)


def test_a_huge_manifest_label_is_refused_naming_the_row(tmp_path):
    for name in ("a.png", "b.png"):
        _png(tmp_path / name)
    (tmp_path / "manifest.csv").write_text("file,label\na.png,0\nb.png,1000000000\n")
    cfg = DataConfig(source="folder", path=str(tmp_path), label_source="manifest")
    with pytest.raises(DataError, match=rf"row 2 has label 1000000000; .* 0\.\.{MAX_CLASSES - 1}"):
        folder_dataset(cfg)
    (tmp_path / "manifest.csv").write_text("file,label\na.png,0\nb.png,-1\n")
    assert folder_dataset(cfg).class_names == ["0"]  # -1 still means "no label"


def test_a_long_thin_image_is_a_bad_file_before_it_is_resized(tmp_path):
    """A 1x3,000,000 PNG is a few KB but becomes 96,000,000x32 pixels when its short side is resized to 32."""
    _png(tmp_path / "thin.png", (3_000_000, 1))
    for i in range(3):
        _png(tmp_path / f"ok{i}.png")
    cfg = DataConfig(source="folder", path=str(tmp_path), label_source="none", max_bad_fraction=0.5)
    dataset = folder_dataset(cfg, "all")
    assert len(dataset) == 3
    reason = dataset.bad.bad[str(tmp_path / "thin.png")]
    assert "would be resized to 96000000x32, more than max_pixels" in reason
    transform = ImageTransform(cfg)
    with pytest.raises(BadImage, match="more than max_pixels"):
        transform(Image.new("L", (3_000_000, 1)))  # the transform refuses it on its own too (shards)
    report = check_data(tmp_path)  # ldm data check lists it with the files training would skip
    assert "would be resized to 96000000x32" in report.bad[str(tmp_path / "thin.png")]


@pytest.mark.parametrize("override, key", [({"resolution": 100000}, "resolution"), ({"pad": 10**6}, "pad"),
                                           ({"resolution": 4096, "synthetic": {"supersample": 8}}, "supersample")])
def test_data_sizes_have_a_maximum(override, key):
    with pytest.raises(ConfigError, match=key):
        from_dict(DataConfig, override)
