"""End to end on CPU with tiny models: autoencoder → diffusion (each conditioning kind) → pipeline → `ldm sample`."""

import json

import pytest
import torch

from ldmkit.cli.main import main as ldm
from ldmkit.config import load_config
from ldmkit.data import build_dataset
from ldmkit.errors import ConfigError
from ldmkit.pipelines import load_pipeline
from ldmkit.training.autoencoder_task import AutoencoderExperiment, AutoencoderTask
from ldmkit.training.diffusion_task import run_diffusion_training
from ldmkit.training.loop import train

SYNTHETIC = [
    "data.resolution=16", "data.synthetic.count=64", "data.synthetic.shapes=[circle, square]",
    "data.synthetic.colours=[red, blue]", "data.synthetic.sizes=[large]", "data.synthetic.max_objects=1",
    "data.synthetic.backgrounds=[white]",
]
TRAIN = ["train.device=cpu", "train.progress=false", "train.image_every=0", "train.log_every=1",
         "train.batch_size=8", "train.checkpoint_every=0"]


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory):
    out = tmp_path_factory.mktemp("ae")
    experiment = load_config(AutoencoderExperiment, "synthetic-kl-f4", [
        *SYNTHETIC, *TRAIN, f"train.out={out}", "train.steps=3", "model.base_channels=8",
        "model.channel_mult=[1, 2]", "loss.perceptual_weight=0", "scale_samples=16"], group="autoencoder")
    dataset = build_dataset(experiment.data)
    train(AutoencoderTask(experiment, dataset), experiment.train, dataset, experiment)
    return out / "model"


def _losses(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    return [e.value for e in events.Scalars("diffusion/loss")]


TINY_UNET = ["unet.model_channels=16", "unet.channel_mult=[1, 2]", "unet.attention_resolutions=[2]",
             "unet.num_head_channels=8", "unet.num_res_blocks=1"]


@pytest.mark.parametrize("kind, extra", [
    ("none", []),
    ("class", ["conditioner.num_classes=4", "conditioner.embed_dim=16"]),
    ("text", ["conditioner.embed_dim=16", "conditioner.text.width=16", "conditioner.text.depth=1",
              "conditioner.text.heads=2"]),
])
def test_diffusion_training_loss_falls_and_pipeline_round_trips(tmp_path, autoencoder, kind, extra):
    out = tmp_path / "ldm"
    run_diffusion_training("synthetic-text", [
        f"autoencoder={autoencoder}", *SYNTHETIC, *TRAIN, *TINY_UNET, f"train.out={out}", "train.steps=60",
        "train.lr=2e-3", "train.warmup_steps=0", "ema_decay=0.9", f"conditioner.kind={kind}", *extra,
        "train.seed=0"])
    losses = _losses(out)
    assert len(losses) == 60
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10

    pipe = load_pipeline(out / "model", device="cpu")
    kwargs = {"text": {"prompt": ["a red circle", "a blue square"]}, "class": {"class_label": [0, 3]},
              "none": {"n": 2}}[kind]
    first = pipe(**kwargs, steps=3, seed=7, output="tensor", progress=False)
    again = pipe(**kwargs, steps=3, seed=7, output="tensor", progress=False)
    other = pipe(**kwargs, steps=3, seed=8, output="tensor", progress=False)
    assert first.shape == (2, 3, 16, 16) and first.min() >= -1 and first.max() <= 1
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    # Convolutional sampling beyond the training size.
    big = pipe(**kwargs, steps=2, height=24, width=32, output="tensor", progress=False)
    assert big.shape[-2:] == (24, 32)


@pytest.fixture(scope="module")
def class_model(tmp_path_factory, autoencoder):
    out = tmp_path_factory.mktemp("ldm-class")
    run_diffusion_training("synthetic-text", [
        f"autoencoder={autoencoder}", *SYNTHETIC, *TRAIN, *TINY_UNET, f"train.out={out}", "train.steps=2",
        "conditioner.kind=class", "conditioner.num_classes=4", "conditioner.embed_dim=16"])
    return out / "model"


def test_sample_command_writes_images_grid_and_settings(tmp_path, class_model):
    out = tmp_path / "samples"
    assert ldm(["sample", "--model", str(class_model), "--class", "1", "2", "--n", "3", "--steps", "2",
                "--device", "cpu", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0000.png", "0001.png", "0002.png", "grid.png",
                                                     "settings.json"]
    settings = json.loads((out / "settings.json").read_text())
    assert settings["class_label"] == [1, 2] and settings["n"] == 3 and settings["sampler"] == "dpm++2m"
    assert ldm(["sample", "--model", str(class_model), "--class", "1", "--interpolate", "--n", "4", "--steps", "2",
                "--device", "cpu", "--out", str(tmp_path / "strip")]) == 0
    assert (tmp_path / "strip" / "interpolation.png").is_file()
    # perturbed-attention guidance on the UNet's middle block, inside a guidance interval
    assert ldm(["sample", "--model", str(class_model), "--class", "1", "--n", "2", "--steps", "2", "--device", "cpu",
                "--pag-scale", "2", "--guidance-interval", "0.5", "200", "--out", str(tmp_path / "pag")]) == 0
    settings = json.loads((tmp_path / "pag" / "settings.json").read_text())
    assert settings["pag_scale"] == 2.0 and settings["pag_layers"] == [] and settings["guidance_interval"] == [0.5, 200]


@pytest.mark.parametrize("args, message", [
    (["--prompt", "a red circle"], "conditioned on 'class', not on text"),
    (["--class", "9"], "class 9 is out of range"),
    (["--class", "1", "--height", "18"], "not a positive multiple"),
])
def test_sample_bad_input_is_one_line(tmp_path, capsys, class_model, args, message):
    code = ldm(["sample", "--model", str(class_model), "--steps", "1", "--device", "cpu",
                "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_sample_unknown_model_dir(tmp_path, capsys):
    assert ldm(["sample", "--model", str(tmp_path / "missing"), "--class", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_guidance_one_equals_conditional(class_model):
    pipe = load_pipeline(class_model, device="cpu")
    with pytest.raises(ConfigError, match="give a class label"):
        pipe(steps=1, progress=False)
    a = pipe(class_label=[1], steps=2, guidance=1.0, seed=3, output="tensor", progress=False)
    b = pipe(class_label=[1], steps=2, guidance=1.0, seed=3, output="tensor", progress=False, batch_size=1)
    assert torch.equal(a, b)


def test_encode_command_resumes_and_diffusion_trains_on_the_cache(tmp_path, autoencoder):
    from ldmkit.data.latents import LatentDataset

    out = tmp_path / "latents"
    args = ["encode", "--autoencoder", str(autoencoder), "--data", "synthetic-easy", "resolution=16",
            "synthetic.count=48", "--out", str(out), "--batch-size", "8", "--shard-size", "16", "--device", "cpu"]
    assert ldm(args) == 0
    first = LatentDataset(out, sample_posterior=False)
    assert len(first) == 48 and first.index["shards"] == ["shard-00000", "shard-00001", "shard-00002"]
    assert first.mean.shape == (48, 3, 8, 8)  # f = 2 autoencoder at 16 px
    assert LatentDataset(out).std.shape == (48, 3, 8, 8)  # KL: the posterior std is kept for sampling
    assert first.captions[0] and int(first.label[0]) >= 0
    # An interrupted encoding: the last shard and the index are gone; rerunning redoes only what is missing.
    (out / "index.json").unlink()
    (out / "shard-00002.safetensors").unlink()
    before = (out / "shard-00000.safetensors").stat().st_mtime_ns
    assert ldm(args) == 0
    assert (out / "shard-00000.safetensors").stat().st_mtime_ns == before
    again = LatentDataset(out, sample_posterior=False)
    assert torch.equal(again.mean, first.mean) and again.captions == first.captions

    run = tmp_path / "ldm"
    run_diffusion_training("synthetic-text", [
        f"autoencoder={autoencoder}", f"latents={out}", *TRAIN, *TINY_UNET, f"train.out={run}", "train.steps=2",
        "conditioner.embed_dim=16", "conditioner.text.width=16", "conditioner.text.depth=1",
        "conditioner.text.heads=2"])
    pipe = load_pipeline(run / "model", device="cpu")
    assert pipe.latent_size == (8, 8)
    assert pipe(prompt="a red circle", steps=1, output="tensor", progress=False).shape == (1, 3, 16, 16)


def test_a_cache_from_another_autoencoder_or_scale_is_refused(tmp_path, autoencoder, capsys):
    import shutil

    from ldmkit.autoencoders import load_autoencoder, save_autoencoder, set_latent_scale

    out = tmp_path / "latents"
    assert ldm(["encode", "--autoencoder", str(autoencoder), "--data", "synthetic-easy", "resolution=16",
                "synthetic.count=8", "--out", str(out), "--batch-size", "8", "--device", "cpu"]) == 0
    rescaled = tmp_path / "rescaled"  # the same weights with another latent scale: latents would not match
    model = load_autoencoder(autoencoder)
    set_latent_scale(model, std=2.0 / model.scale_factor)
    save_autoencoder(rescaled, model)
    other = tmp_path / "other"  # different weights
    shutil.copytree(autoencoder, other)
    model = load_autoencoder(other)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    save_autoencoder(other, model)
    capsys.readouterr()
    for wrong, what in ((rescaled, "latent scale"), (other, "weights")):
        code = ldm(["train", "diffusion", "--config", "synthetic-text", f"autoencoder={wrong}", f"latents={out}",
                    *TRAIN, *TINY_UNET, f"train.out={tmp_path / 'run'}", "train.steps=1"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert f"was encoded by another autoencoder ({what} differ" in err
    assert not (tmp_path / "run").exists()


def test_too_little_free_space_is_reported_before_training(tmp_path, monkeypatch, capsys):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    code = ldm(["train", "autoencoder", "--config", "synthetic-kl-f4", *SYNTHETIC, *TRAIN,
                f"train.out={tmp_path / 'run'}", "loss.perceptual_weight=0"])
    err = capsys.readouterr().err
    assert code == 2 and "MiB free in" in err and "a checkpoint needs about" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resuming_with_a_changed_model_says_which_weights_differ(tmp_path, capsys):
    args = ["train", "autoencoder", "--config", "synthetic-kl-f4", *SYNTHETIC, *TRAIN, f"train.out={tmp_path}",
            "loss.perceptual_weight=0", "model.base_channels=8", "train.steps=1", "scale_samples=8"]
    assert ldm(args) == 0
    capsys.readouterr()
    changed = [*args[:-2], "model.base_channels=16", "train.steps=2", "scale_samples=8"]
    code = ldm(changed)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "model.base_channels 8 -> 16" in err and "step 1" in err and "train.steps" not in err.split(";")[0]
    # Without the run's config.yaml to compare with, the weights themselves say what no longer fits.
    (tmp_path / "config.yaml").unlink()
    code = ldm(changed)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "do not fit the model: mis-shaped" in err and "step-00000001" in err
