"""`ldm export --to diffusers` of the x4 upscaler. A tiny random StableDiffusionUpscalePipeline folder (a UNet with a
noise-level table and 7 input channels, a KL-f4 VAE, an OpenCLIP-style text encoder, and a low_res_scheduler and
max_noise_level unlike diffusers' defaults) converts to ldmkit and exports back to a folder that diffusers loads
with the same tensors, the same UNet function, the same schedules and the same noise limit; bad inputs are one
line and write nothing."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionUpscalePipeline,
)

from ldmkit.cli.main import main as ldm  # noqa: E402
from ldmkit.denoisers import UNet  # noqa: E402
from ldmkit.diffusion.schedules import ScheduleConfig  # noqa: E402
from ldmkit.errors import ConfigError  # noqa: E402
from ldmkit.interop.convert import read_source, write_parts  # noqa: E402
from ldmkit.interop.export import export  # noqa: E402
from ldmkit.interop.noise_augmentation import NoiseAugmentation, from_original  # noqa: E402
from ldmkit.interop.sd_configs import sd_config  # noqa: E402
from ldmkit.io import read_model_dir  # noqa: E402
from ldmkit.model import LatentDiffusionModel  # noqa: E402
from tests.unit.test_interop_convert import _with_vocab, files, randomise, reference  # noqa: E402, F401
from tests.unit.test_interop_unet import random_diffusers, rel_err, run_both  # noqa: E402

# The noise augmentation differs from diffusers' defaults (1000 steps, 1e-4 … 0.02, 350) so that carrying it is seen.
LOW_RES = dict(num_train_timesteps=500, beta_schedule="scaled_linear", beta_start=2e-4, beta_end=0.03)
MAX_NOISE_LEVEL = 7  # below the tiny UNet's 10 noise-level labels
NOISE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type",
              "rescale_betas_zero_snr", "trained_betas")


def settings(scheduler) -> dict:
    """A scheduler's config without diffusers' bookkeeping (``_use_default_values``, ``_class_name``, …)."""
    return {k: v for k, v in scheduler.config.items() if not k.startswith("_")}


@pytest.fixture()
def original(tmp_path, files):
    """(the diffusers pipeline, its saved folder, the tiny BPE vocabulary's folder)."""
    vocab_dir = files[2]
    vae = randomise(AutoencoderKL(block_out_channels=(32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 3,
                                  up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, layers_per_block=1,
                                  scaling_factor=0.08333))
    text = randomise(transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=514, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, hidden_act="gelu")))
    tokenizer = transformers.CLIPTokenizer(str(vocab_dir / "vocab.json"), str(vocab_dir / "merges.txt"),
                                           pad_token="!")
    pipe = StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=random_diffusers("upscaler"),
        low_res_scheduler=DDPMScheduler(**LOW_RES),
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=1e-4, beta_end=0.02,
                                prediction_type="v_prediction"),
        max_noise_level=MAX_NOISE_LEVEL)
    pipe.save_pretrained(str(tmp_path / "original"))
    return pipe, tmp_path / "original", vocab_dir


@pytest.fixture()
def model_dir(tmp_path, original):
    _, folder, vocab_dir = original
    return write_parts(_with_vocab(read_source(folder), vocab_dir), tmp_path / "model")


def test_export_loads_in_the_upscale_pipeline_with_the_same_weights_and_schedules(tmp_path, original, model_dir):
    first, folder, _ = original
    exported = export(model_dir, "diffusers", tmp_path / "exported")
    pipe = StableDiffusionUpscalePipeline.from_pretrained(str(exported))
    theirs = StableDiffusionUpscalePipeline.from_pretrained(str(folder))  # diffusers reading its own folder
    for name in ("unet", "vae", "text_encoder"):
        got, ref = getattr(pipe, name).state_dict(), getattr(first, name).state_dict()
        assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref), name
    got, ref = run_both(first.unet, LatentDiffusionModel.load(model_dir).unet)
    assert rel_err(got, ref) <= 1e-5  # ldmkit's network is diffusers' function
    gen = torch.Generator().manual_seed(3)
    x, context = torch.randn(2, 7, 8, 8, generator=gen), torch.randn(2, 5, 16, generator=gen)
    t, labels = torch.tensor([3, 900]), torch.tensor([0, MAX_NOISE_LEVEL])
    with torch.no_grad():
        assert torch.equal(pipe.unet(x, t, context, class_labels=labels).sample,
                           first.unet(x, t, context, class_labels=labels).sample)
    # model_index.json as diffusers writes it; the scheduler is PNDM (as every ldmkit export) on the same betas.
    index = json.loads((exported / "model_index.json").read_text())
    want = json.loads((folder / "model_index.json").read_text())
    assert index.pop("scheduler") == ["diffusers", "PNDMScheduler"] and want.pop("scheduler")
    assert index == want and pipe.config.max_noise_level == MAX_NOISE_LEVEL
    assert settings(pipe.low_res_scheduler) == settings(theirs.low_res_scheduler)
    assert torch.equal(pipe.low_res_scheduler.alphas_cumprod, theirs.low_res_scheduler.alphas_cumprod)
    assert all(pipe.scheduler.config[k] == theirs.scheduler.config[k] for k in NOISE_KEYS)
    assert torch.equal(pipe.scheduler.alphas_cumprod, theirs.scheduler.alphas_cumprod)
    assert pipe.vae.config.scaling_factor == 0.08333
    low_res = torch.rand(1, 3, 8, 8, generator=gen)
    images = pipe("a cat", image=low_res, num_inference_steps=2, noise_level=MAX_NOISE_LEVEL, output_type="np",
                  generator=gen).images
    assert images.shape == (1, 32, 32, 3)


def test_reading_the_export_back_gives_the_same_ldmkit_model(tmp_path, original, model_dir):
    _, folder, _ = original
    recorded = read_model_dir(model_dir).extra["noise_augmentation"]
    assert recorded == {"schedule": dataclasses.asdict(ScheduleConfig(kind="scaled_linear", num_timesteps=500,
                                                                      beta_start=2e-4, beta_end=0.03)),
                        "max_noise_level": MAX_NOISE_LEVEL}
    again, first = read_source(export(model_dir, "diffusers", tmp_path / "exported")), read_source(folder)
    for a, b in ((again.unet_state, first.unet_state), (again.autoencoder_state, first.autoencoder_state),
                 (again.conditioner_state, first.conditioner_state)):
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    for field in ("unet", "autoencoder", "conditioner", "schedule", "latent_size", "noise_augmentation"):
        assert getattr(again, field) == getattr(first, field), field


def test_cli_export_and_the_original_yaml_noise_augmentation(tmp_path, model_dir, capsys):
    assert ldm(["export", str(model_dir), "--to", "diffusers", "--out", str(tmp_path / "cli")]) == 0
    assert "wrote diffusers folder" in capsys.readouterr().out
    assert (tmp_path / "cli" / "low_res_scheduler" / "scheduler_config.json").is_file()
    # A single file converts with the published YAML's low_scale_config: diffusers' own published values.
    published = from_original(sd_config("x4-upscaling.yaml")["model"]["params"])
    assert published == NoiseAugmentation(ScheduleConfig(kind="scaled_linear", beta_start=1e-4, beta_end=0.02), 350)


def _no_table(parts):
    parts.unet = dataclasses.replace(parts.unet, class_embeddings=None)
    with torch.device("meta"):
        keep = UNet(parts.unet).state_dict()
    parts.unet_state = {k: v for k, v in parts.unet_state.items() if k in keep}


def _concat(**change):
    def spoil(parts):
        concat = dataclasses.replace(parts.conditioner.concat, **change)
        parts.conditioner = dataclasses.replace(parts.conditioner, concat=concat)
    return spoil


BAD_MODELS = {
    "no noise-level table": (_no_table, "no noise-level table"),
    "no noise augmentation": (lambda p: setattr(p, "noise_augmentation", None), "records no noise augmentation"),
    "level past the table": (lambda p: setattr(p, "noise_augmentation", NoiseAugmentation(ScheduleConfig(), 10)),
                             "has no row in the UNet's noise-level table"),
    "another factor": (_concat(low_res_factor=2), "upscales by the first stage's factor 4"),
    "an encoded image": (_concat(low_res_mode="encode"), "encodes it"),
}


@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_a_model_diffusers_cannot_hold_is_one_line_and_writes_nothing(tmp_path, original, case, capsys):
    _, folder, vocab_dir = original
    spoil, message = BAD_MODELS[case]
    parts = _with_vocab(read_source(folder), vocab_dir)
    spoil(parts)
    bad = write_parts(parts, tmp_path / "bad")
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=message) as caught:
        export(bad, "diffusers", out)
    assert "\n" not in str(caught.value) and not out.exists()
    assert ldm(["export", str(bad), "--to", "diffusers", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and not out.exists()


def test_the_single_file_and_a_bad_noise_limit_are_one_line(tmp_path, original, model_dir):
    with pytest.raises(ConfigError, match="exports only as a diffusers folder") as caught:
        export(model_dir, "sd-safetensors", tmp_path / "x4.safetensors")
    assert "\n" not in str(caught.value) and not (tmp_path / "x4.safetensors").exists()
    _, folder, _ = original
    index = json.loads((folder / "model_index.json").read_text())
    for level, message in ((500, "past the end of its schedule"), ("350", "whole number")):
        (folder / "model_index.json").write_text(json.dumps({**index, "max_noise_level": level}))
        with pytest.raises(ConfigError, match=message) as caught:
            read_source(folder)
        assert "\n" not in str(caught.value)
