"""Super-resolution (paper §4.4): degradations, the low_res concat route, UpscalePipeline (tiled too), `ldm upscale`."""

from __future__ import annotations

import itertools
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from torch import nn

from ldmkit.autoencoders import AutoencoderConfig
from ldmkit.autoencoders.identity import IdentityAutoencoder
from ldmkit.cli.main import main as ldm_main
from ldmkit.conditioning import ConcatConfig, ConditionerConfig, build_conditioner
from ldmkit.data.degradations import BlindDegradationConfig
from ldmkit.config import from_dict
from ldmkit.data.degradations import degrade, degrade_blind, gaussian_blur, jpeg_roundtrip, resize_image
from ldmkit.diffusion.schedules import NoiseSchedule, ScheduleConfig
from ldmkit.errors import ConfigError, DataError
from ldmkit.model import LatentDiffusionModel
from ldmkit.pipelines import UpscalePipeline
from ldmkit.pipelines.upscale import TileGrid

ALWAYS = BlindDegradationConfig(blur_prob=1.0, noise_prob=1.0, jpeg_prob=1.0)


def _image(batch=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=g) * 2 - 1


# ----- degradations ---------------------------------------------------------------------------------------
def test_bicubic_is_the_antialiased_bicubic_downsampling():
    image = _image()
    low = degrade(image, 4)
    assert low.shape == (2, 3, 4, 4)
    expected = F.interpolate(image, size=(4, 4), mode="bicubic", align_corners=False, antialias=True).clamp(-1, 1)
    assert torch.allclose(low, expected)


def test_blind_is_reproducible_per_seed_and_differs_from_bicubic():
    image = _image()
    first = degrade(image, 2, "blind", ALWAYS, torch.Generator().manual_seed(3))
    again = degrade(image, 2, "blind", ALWAYS, torch.Generator().manual_seed(3))
    other = degrade(image, 2, "blind", ALWAYS, torch.Generator().manual_seed(4))
    assert first.shape == (2, 3, 8, 8) and first.abs().max() <= 1
    assert torch.equal(first, again)
    assert not torch.allclose(first, other, atol=1e-3)
    assert (first - degrade(image, 2)).abs().mean() > 0.01
    # The two images of a batch get their own draws: a duplicated image degrades differently.
    twins = degrade_blind(image[:1].repeat(2, 1, 1, 1), 2, ALWAYS, torch.Generator().manual_seed(0))
    assert not torch.allclose(twins[0], twins[1], atol=1e-3)


def test_blind_with_every_step_off_is_a_plain_resize():
    image = _image()
    off = BlindDegradationConfig(blur_prob=0.0, noise_prob=0.0, jpeg_prob=0.0, resize_modes=("bicubic",))
    assert torch.allclose(degrade_blind(image, 4, off, torch.Generator().manual_seed(0)), degrade(image, 4))


def test_blur_keeps_constants_and_smooths():
    flat = torch.full((1, 3, 9, 9), 0.3)
    assert torch.allclose(gaussian_blur(flat, 1.5), flat, atol=1e-6)
    noise = _image(1, 16)
    assert gaussian_blur(noise, 1.5).std() < 0.5 * noise.std()
    assert torch.equal(gaussian_blur(noise, 0.0), noise)


def test_jpeg_roundtrip_quantises_to_8_bit_and_loses_detail():
    image = _image(1, 16)[0]
    low, high = jpeg_roundtrip(image, 10), jpeg_roundtrip(image, 95)
    assert low.shape == image.shape
    assert torch.allclose((low + 1) * 127.5, ((low + 1) * 127.5).round(), atol=1e-3)
    assert (low - image).abs().mean() > (high - image).abs().mean()


def test_degradation_errors_are_one_line():
    with pytest.raises(DataError, match="not divisible by the super-resolution factor 4"):
        degrade(torch.zeros(1, 3, 10, 12), 4)
    with pytest.raises(ConfigError, match="not one of bicubic, blind"):
        degrade(torch.zeros(1, 3, 8, 8), 2, "gaussian")
    with pytest.raises(ConfigError, match="low <= high"):
        BlindDegradationConfig(noise_sigma=(5.0, 1.0))
    with pytest.raises(ConfigError, match="resize_modes"):
        from_dict(ConcatConfig, {"kind": "low_res", "blind": {"resize_modes": ["lanczos"]}})
    cfg = from_dict(ConcatConfig, {"kind": "low_res", "low_res_degradation": "blind", "blind": {"jpeg_prob": 0.2}})
    assert cfg.low_res_degradation == "blind" and cfg.blind.jpeg_prob == 0.2


# ----- the concat route -----------------------------------------------------------------------------------
def _low_res_conditioner(degradation="bicubic", factor=4, downsample=4):
    concat = ConcatConfig(kind="low_res", downsample_factor=downsample, low_res_factor=factor,
                          low_res_degradation=degradation, blind=ALWAYS)
    return build_conditioner(ConditionerConfig(kind="none", drop_prob=0.0, concat=concat))


def test_concat_encoder_degrades_images_with_the_configured_chain():
    image = _image(2, 32)
    bicubic = _low_res_conditioner("bicubic").encode({"image": image}).concat
    assert torch.allclose(bicubic, degrade(image, 4))  # 8² low-res on the 8² latent grid of f = 4
    blind = _low_res_conditioner("blind")
    a = blind.concat_encoder({"image": image}, generator=torch.Generator().manual_seed(1)).concat
    b = blind.concat_encoder({"image": image}, generator=torch.Generator().manual_seed(1)).concat
    assert a.shape == (2, 3, 8, 8) and torch.equal(a, b) and not torch.allclose(a, bicubic, atol=1e-2)
    given = torch.zeros(2, 3, 8, 8)  # an explicit low_res wins over the degradation
    assert torch.equal(blind.encode({"image": image, "low_res": given}).concat, given)


def test_low_res_input_reaches_the_unet_concat_channels():
    from ldmkit.denoisers.unet import UNet
    from ldmkit.denoisers.unet_config import UNetConfig

    conditioner = _low_res_conditioner()
    unet = UNet(UNetConfig(in_channels=3, out_channels=3, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                           attention_resolutions=(2,), num_heads=2, concat_channels=conditioner.concat_channels))
    seen = []
    unet.conv_in.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    image = _image(2, 32)
    z = torch.randn(2, 3, 8, 8)
    unet(z, torch.tensor([10, 500]), conditioner.encode({"image": image}))
    assert seen[0].shape == (2, 6, 8, 8)
    assert torch.equal(seen[0][:, :3], z) and torch.allclose(seen[0][:, 3:], degrade(image, 4))


# ----- the pipeline on stub parts -------------------------------------------------------------------------
class CopyConditionUNet(nn.Module):
    """Predicts x0 = the concat condition (the upsampled low-res image) and records every input size."""

    def __init__(self, downsample: int = 1):
        super().__init__()
        self.config = SimpleNamespace(downsample_factor=downsample)
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the pipeline a device
        self.sizes: list[tuple[int, int]] = []

    def forward(self, x, t, cond):
        size = self.config.downsample_factor
        assert x.shape[-2] % size == 0 and x.shape[-1] % size == 0
        self.sizes.append(tuple(x.shape[-2:]))
        return cond.concat + 0 * x


class TileMeanUNet(CopyConditionUNet):
    """Predicts, over its whole input, the mean of its concat crop: a different constant per tile."""

    def forward(self, x, t, cond):
        super().forward(x, t, cond)
        return cond.concat.mean(dim=(-2, -1), keepdim=True).expand_as(x).contiguous()


class RecordingIdentity(IdentityAutoencoder):
    def __init__(self):
        super().__init__(AutoencoderConfig(kind="identity"))
        self.sizes: list[tuple[int, int]] = []

    def _encode_raw(self, x):
        self.sizes.append(tuple(x.shape[-2:]))
        return super()._encode_raw(x)

    def _decode_raw(self, z):
        self.sizes.append(tuple(z.shape[-2:]))
        return z


def _pipeline(unet=None, factor=2, kind="low_res", latent=8, mode="resize"):
    """Pixel-space (f = 1) upscaler of ``factor`` with an x0-predicting stub network."""
    concat = ConcatConfig(kind=kind, downsample_factor=1, low_res_factor=factor, latent_channels=3, low_res_mode=mode)
    conditioner = build_conditioner(ConditionerConfig(kind="none", drop_prob=0.0, concat=concat))
    return UpscalePipeline(LatentDiffusionModel(
        unet=unet or CopyConditionUNet(), schedule=NoiseSchedule(ScheduleConfig(prediction="x0")),
        conditioner=conditioner, autoencoder=RecordingIdentity(), latent_size=(latent, latent)))


def _upscale(pipe, image, **kwargs):
    return pipe(image, steps=3, sampler="ddim", seed=0, output="tensor", progress=False, **kwargs)


def test_output_is_factor_times_the_input_and_follows_the_condition():
    low = _image(1, 6)[0]
    out = _upscale(_pipeline(factor=3), low)
    assert out.shape == (1, 3, 18, 18)
    assert torch.allclose(out[0], resize_image(low[None], (18, 18))[0], atol=1e-5)
    pil = _pipeline(factor=2)(Image.new("RGB", (5, 4), (200, 30, 30)), steps=2, sampler="ddim", progress=False)
    assert pil[0].size == (10, 8)


@pytest.mark.parametrize("mode", ["resize", "encode"])
def test_tiled_equals_untiled_and_stays_within_the_tile(mode):
    low = _image(1, 10)[0]  # output latent 20×20, tiles of 8 with overlap 3
    untiled = _upscale(_pipeline(mode=mode), low)
    assert torch.allclose(untiled[0], resize_image(low[None], (20, 20))[0], atol=1e-5)
    pipe = _pipeline(mode=mode)
    tiled = _upscale(pipe, low, tile=8, overlap=3, tile_batch=2)
    assert torch.allclose(tiled, untiled, atol=1e-5)
    assert max(max(s) for s in pipe.unet.sizes) == 8  # the network never saw more than a tile
    assert max(max(s) for s in pipe.autoencoder.sizes) == 8  # nor did the decoder (nor the encoder: encode mode)
    assert len(TileGrid(20, 20, (8, 8), 3).tiles()) == 16  # 4 × 4 tiles: overlaps of at least 3 cells
    assert len(pipe.unet.sizes) == 3 * 16 // 2  # 3 steps × 16 tiles in batches of 2
    whole = _pipeline(mode=mode)  # a tile as large as the image: one pass, the untiled computation
    assert torch.equal(_upscale(whole, low, tile=32), untiled) and whole.unet.sizes == [(20, 20)] * 3


def test_an_optimized_upscaler_still_tiles(monkeypatch):
    """optimize() puts the fast network inside the tiling wrapper, not in its place."""
    from ldmkit.pipelines import text2img
    from ldmkit.pipelines.upscale import TiledNetwork

    monkeypatch.setattr(text2img, "_has_fast_path", lambda device: True)  # the GPU path, run on the CPU
    low = _image(1, 10)[0]
    pipe = _pipeline()
    tiled = _upscale(pipe, low, tile=8, overlap=3, tile_batch=2)
    pipe.optimize(compile=False, bf16_weights=False, channels_last=False)
    assert isinstance(pipe.denoiser.network, TiledNetwork) and pipe.denoiser.network.network is pipe.unet
    pipe.unet.sizes.clear()
    assert torch.allclose(_upscale(pipe, low, tile=8, overlap=3, tile_batch=2), tiled, atol=1e-6)
    assert max(max(s) for s in pipe.unet.sizes) == 8  # still one tile at a time


def test_constant_image_upscales_to_a_constant_image_without_seams():
    flat = torch.full((3, 12, 12), 0.4)
    out = _upscale(_pipeline(TileMeanUNet()), flat, tile=8, overlap=4)
    assert out.shape == (1, 3, 24, 24) and torch.allclose(out, torch.full_like(out, 0.4), atol=1e-5)


def test_overlaps_blend_smoothly():
    # A horizontal ramp: each tile predicts its own mean, so neighbouring tiles disagree by about the ramp's rise
    # over the tile stride; the linear blend turns each disagreement into a ramp across the overlap.
    ramp = torch.linspace(-1, 1, 16).expand(3, 8, 16).contiguous()
    pipe = _pipeline(TileMeanUNet(), factor=2)
    out = _upscale(pipe, ramp, tile=8, overlap=4)[0, 0]  # [16, 32]
    tiles = TileGrid(16, 32, (8, 8), 4).tiles()
    means = sorted({round(float(resize_image(ramp[None], (16, 32))[0, 0, :, t.left:t.left + 8].mean()), 6)
                    for t in tiles})
    worst_jump = max(b - a for a, b in itertools.pairwise(means))
    steps = (out[:, 1:] - out[:, :-1]).abs().max()
    assert steps <= worst_jump / 4 + 1e-5  # a hard seam would jump by the whole disagreement in one cell
    assert torch.all(out[:, 1:] >= out[:, :-1] - 1e-6)  # monotone like the input


def test_tile_weights_are_a_partition_of_unity():
    # Where no cell lies in three tiles, neighbouring ramps sum to exactly 1 (the blend divides by the sum anyway).
    grid = TileGrid(19, 13, (8, 6), 2)
    assert [(t.top, t.left) for t in grid.tiles()][:4] == [(0, 0), (0, 4), (0, 7), (6, 0)]
    total = torch.zeros(19 * 2, 13 * 2)
    for tile in grid.tiles():
        rows, cols = tile.region(2)
        weight = tile.weight(2)[0, 0]
        assert weight.min() > 0 and weight.max() <= 1
        total[rows, cols] += weight
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)


def test_untiled_size_must_fit_the_network_but_tiles_need_not():
    pipe = _pipeline(CopyConditionUNet(downsample=4))
    with pytest.raises(DataError) as info:
        _upscale(pipe, _image(1, 5)[0])  # ×2 → 10, not a multiple of 4
    assert "\n" not in str(info.value) and "not a multiple of 2" in str(info.value) and "--tile" in str(info.value)
    assert _upscale(pipe, _image(1, 5)[0], tile=4, overlap=1).shape == (1, 3, 10, 10)
    with pytest.raises(ConfigError, match="multiple of 4"):
        _upscale(pipe, _image(1, 8)[0], tile=6)
    with pytest.raises(ConfigError, match="overlap"):
        _upscale(pipe, _image(1, 8)[0], tile=4, overlap=4)


def test_a_model_without_a_low_res_condition_is_refused():
    with pytest.raises(ConfigError) as info:
        _pipeline(kind="none")
    assert "\n" not in str(info.value) and "not 'low_res'" in str(info.value)


# ----- training and the command ---------------------------------------------------------------------------
def test_train_a_low_res_model_and_upscale_through_the_command(make_first_stage, recording_diffusion_losses,
                                                               tmp_path, capsys):
    config = {
        "autoencoder": str(make_first_stage((1, 2))),
        "data": {"source": "synthetic", "resolution": 16, "synthetic": {"count": 8, "supersample": 1}},
        "unet": {"model_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [2],
                 "num_heads": 2},
        "conditioner": {"kind": "none", "drop_prob": 0.0,
                        "concat": {"kind": "low_res", "downsample_factor": 2, "latent_channels": 3,
                                   "low_res_factor": 2, "low_res_degradation": "blind"}},
        "train": {"out": str(tmp_path / "run"), "steps": 3, "batch_size": 4, "device": "cpu", "progress": False,
                  "image_every": 0, "checkpoint_every": 0, "lr": 1e-3},
    }
    (tmp_path / "sr.yaml").write_text(yaml.safe_dump(config))
    with recording_diffusion_losses() as losses:
        assert ldm_main(["train", "diffusion", "--config", str(tmp_path / "sr.yaml")]) == 0
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    model = next(p.parent for p in (tmp_path / "run").rglob("unet.safetensors"))

    Image.new("RGB", (12, 8), (20, 120, 220)).save(tmp_path / "small.png")
    out = tmp_path / "up"
    code = ldm_main(["upscale", "--model", str(model), "--image", str(tmp_path / "small.png"), "--steps", "2",
                     "--sampler", "ddim", "--out", str(out), "--device", "cpu", "--tile", "4", "--overlap", "1"])
    assert code == 0
    assert Image.open(out / "0000.png").size == (24, 16)
    settings = json.loads((out / "settings.json").read_text())
    assert settings["factor"] == 2 and settings["tile"] == 4 and settings["size"] == [16, 24]

    capsys.readouterr()
    code = ldm_main(["upscale", "--model", str(model), "--image", str(tmp_path / "small.png"), "--height", "8",
                     "--out", str(out)])
    assert code == 2 and "drop --height" in capsys.readouterr().err
    Image.new("RGB", (7, 8)).save(tmp_path / "odd.png")  # ×2 = 14 is not a multiple of f 2 × UNet 2
    code = ldm_main(["upscale", "--model", str(model), "--image", str(tmp_path / "odd.png"), "--out", str(out),
                     "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "not a multiple of 2" in err
