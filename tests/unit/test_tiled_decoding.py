"""Tiled decoding: blends exactly where the decoder is local, stays close where it is not, bounds the estimate,
and reaches every task through one pipeline setting and one CLI flag."""

import json

import pytest
import torch

from ldmkit.autoencoders import AutoencoderConfig, build_autoencoder
from ldmkit.cli.main import main as ldm
from ldmkit.conditioning import ConditionerConfig, build_conditioner
from ldmkit.denoisers import UNet, UNetConfig
from ldmkit.diffusion.schedules import NoiseSchedule, ScheduleConfig
from ldmkit.errors import ConfigError
from ldmkit.model import LatentDiffusionModel
from ldmkit.nn.tiles import TileGrid
from ldmkit.pipelines import ImageToImagePipeline, LatentDiffusionPipeline, memory

FAST = {"steps": 2, "sampler": "ddim", "output": "tensor", "progress": False}


def _model(kind: str) -> LatentDiffusionModel:
    torch.manual_seed(0)
    ae_cfg = (AutoencoderConfig(kind="identity") if kind == "identity" else
              AutoencoderConfig(kind="kl", base_channels=8, channel_mult=(1, 2), num_res_blocks=1, latent_channels=3,
                                mid_attention=False))
    unet = UNet(UNetConfig(in_channels=3, out_channels=3, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                           attention_resolutions=(), num_heads=2))
    return LatentDiffusionModel(unet=unet.eval(), schedule=NoiseSchedule(ScheduleConfig()),
                                conditioner=build_conditioner(ConditionerConfig(kind="none")),
                                autoencoder=build_autoencoder(ae_cfg).eval(), latent_size=(8, 8))


def test_tiles_cover_the_grid_and_their_weights_sum_to_one():
    grid = TileGrid(13, 21, (8, 8), 2)
    total = torch.zeros(13, 21)
    for tile in grid.tiles():
        rows, cols = tile.region()
        total[rows, cols] += tile.weight()[0, 0]
    assert torch.allclose(total, torch.ones(13, 21))


def test_a_pointwise_decoder_decodes_tile_by_tile_exactly():
    model = _model("identity")  # the decoder is the identity: every tile's pixels are exact, so is their blend
    latents = torch.randn(2, 3, 20, 28).clamp(-1, 1)
    assert torch.allclose(model.decode(latents, tile=(8, 8), overlap=2), model.decode(latents), atol=1e-6)


def test_a_convolutional_decoder_decodes_close_to_whole_images_and_tiles_larger_than_the_image_change_nothing():
    model = _model("kl")
    latents = torch.randn(2, 3, 24, 24)
    whole = model.decode(latents)
    assert torch.equal(model.decode(latents, tile=(24, 24)), whole)
    tiled = model.decode(latents, tile=(12, 12), overlap=4)
    assert tiled.shape == whole.shape == (2, 3, 48, 48)
    no_overlap = model.decode(latents, tile=(12, 12), overlap=0)
    # Each tile misses the cells beyond it and normalises with its own GroupNorm statistics (measured here: 9 %
    # of the mean magnitude with a random decoder); overlapping tiles hide part of the seam.
    assert (tiled - whole).abs().mean() < (no_overlap - whole).abs().mean()
    assert (tiled - whole).abs().mean() < 0.15 * whole.abs().mean()


def test_the_memory_estimate_of_tiled_decoding_does_not_grow_with_the_decoder(monkeypatch):
    sd_vae = AutoencoderConfig(kind="kl", base_channels=128, channel_mult=(1, 2, 4, 4), latent_channels=4)
    whole = memory.sampling_bytes(None, sd_vae, 2048, 2048, batch=1, count=1)
    tiled = memory.sampling_bytes(None, sd_vae, 2048, 2048, batch=1, count=1, decode_tile=(64, 64))
    assert tiled < whole / 10  # 512² pixel tiles of a 2048² image: the full-size buffers are what is left
    pipe = LatentDiffusionPipeline(_model("kl"))
    with pytest.raises(ConfigError, match=r"decode in tiles \(--decode-tile auto"):  # the refusal names the way out
        monkeypatch.setattr(memory, "device_memory_bytes", lambda device: 1)
        pipe(n=1, **FAST)
    with pytest.raises(ConfigError, match="decoding tile must be"):
        pipe.tile_decoding(0)
    with pytest.raises(ConfigError, match="overlap must be in"):
        pipe.tile_decoding(4, overlap=4)


def test_every_task_decodes_with_the_pipelines_tiles(monkeypatch):
    pipe = LatentDiffusionPipeline(_model("kl")).tile_decoding(4, overlap=1)
    seen = []
    decode = pipe.model.decode
    monkeypatch.setattr(pipe.model, "decode", lambda latents, **kw: seen.append(kw) or decode(latents, **kw))
    pipe(n=1, **FAST)
    ImageToImagePipeline.from_pipeline(pipe)(torch.zeros(1, 3, 16, 16), **FAST)
    assert [kw for kw in seen if kw] == [{"tile": (4, 4), "overlap": 1}] * 2  # (tiles call decode per tile)
    assert pipe.tile_decoding(None).decode_tile is None


def test_sample_command_decodes_in_tiles(tmp_path):
    model = _model("kl")
    model.save(tmp_path / "model")
    out = tmp_path / "samples"
    code = ldm(["sample", "--model", str(tmp_path / "model"), "--steps", "1", "--sampler", "ddim", "--n", "1",
                "--height", "32", "--width", "32", "--decode-tile", "8", "--device", "cpu", "--out", str(out)])
    assert code == 0 and (out / "grid.png").is_file()
    assert json.loads((out / "settings.json").read_text())["n"] == 1
