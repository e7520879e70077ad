"""Fine-tuning: a new run starts from a model directory's weights (train.init_from) and trains only the chosen
part (train.trainable); frozen parts keep their weights bit for bit and get no optimiser state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ldmkit.config import load_config
from ldmkit.data import build_dataset, dataset_captions
from ldmkit.errors import CheckpointError, ConfigError
from ldmkit.io import read_model_dir
from ldmkit.training.autoencoder_task import AutoencoderExperiment, AutoencoderTask
from ldmkit.training.checkpoint import CheckpointManager
from ldmkit.training.diffusion_task import DiffusionExperiment, DiffusionTask
from ldmkit.training.loop import train
from ldmkit.training.trainable import AUTOENCODER_PARTS
from tests.unit.test_training_resume import AE_OVERRIDES, DM_OVERRIDES

AE_FAST = [*AE_OVERRIDES, "train.steps=2", "train.checkpoint_every=0", "loss.disc_start=1000", "scale_samples=4"]
DM_FAST = [*DM_OVERRIDES, "train.steps=2", "train.checkpoint_every=0"]


def train_ae(out: Path, *extra: str) -> tuple[AutoencoderTask, Path]:
    experiment = load_config(AutoencoderExperiment, "synthetic-kl-f4", [*AE_FAST, f"train.out={out}", *extra],
                             group="autoencoder")
    dataset = build_dataset(experiment.data, split="train")
    task = AutoencoderTask(experiment, dataset)
    return task, train(task, experiment.train, dataset, experiment)


def train_dm(out: Path, autoencoder: Path, *extra: str) -> tuple[DiffusionTask, Path]:
    experiment = load_config(DiffusionExperiment, "synthetic-text",
                             [*DM_FAST, f"autoencoder={autoencoder}", f"train.out={out}", *extra], group="diffusion")
    dataset = build_dataset(experiment.data, split="train")
    task = DiffusionTask(experiment, dataset, dataset_captions(dataset))
    return task, train(task, experiment.train, dataset, experiment)


def is_encoder(key: str) -> bool:
    return key.startswith(AUTOENCODER_PARTS["encoder"])


def optimiser_entries(run: Path, name: str) -> tuple[int, int]:
    """(parameters the optimiser holds, parameters with moment state) in the run's last checkpoint."""
    manager = CheckpointManager(run / "checkpoints")
    state = manager.load_state(manager.latest())["optimizers"][name]
    return sum(len(g["params"]) for g in state["param_groups"]), len(state["state"])


@pytest.fixture(scope="module")
def first_stage(tmp_path_factory) -> Path:
    _, model = train_ae(tmp_path_factory.mktemp("ae") / "base")
    return model


# --- autoencoder ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("part", ["decoder", "encoder"])
def test_autoencoder_fine_tunes_one_half_from_a_model(first_stage, tmp_path, part):
    before = load_file(str(first_stage / "model.safetensors"))
    task, model = train_ae(tmp_path / part, f"train.init_from={first_stage}", f"train.trainable={part}")
    after = load_file(str(model / "model.safetensors"))
    frozen = [k for k in before if is_encoder(k) != (part == "encoder")]
    trained = [k for k in before if k not in frozen]
    assert frozen and trained
    assert all(torch.equal(before[k], after[k]) for k in frozen)  # the frozen half, bit for bit
    assert all(not torch.equal(before[k], after[k]) for k in trained if "weight" in k)  # the other half moved
    assert all(p.requires_grad == (is_encoder(n) == (part == "encoder")) for n, p in task.model.named_parameters())
    held, with_state = optimiser_entries(tmp_path / part, "generator")
    halves = sum(1 for n, _ in task.model.named_parameters() if is_encoder(n) == (part == "encoder"))
    assert held == with_state == halves + len(list(task.loss.generator_parameters()))  # + the log-variance
    scale = read_model_dir(model).config["scale_factor"]
    if part == "decoder":  # the encoder's latents, and so their scale, are the init's
        assert scale == read_model_dir(first_stage).config["scale_factor"]


def test_autoencoder_weights_of_another_architecture_are_refused_naming_the_keys(first_stage, tmp_path):
    with pytest.raises(CheckpointError) as caught:
        train_ae(tmp_path / "wide", f"train.init_from={first_stage}", "model.base_channels=16")
    message = str(caught.value)
    assert "\n" not in message and "do not fit the model" in message and "mis-shaped" in message
    assert "decoder.levels.0.blocks.0.conv1.weight (16, 16, 3, 3) vs (32, 32, 3, 3)" in message


def test_autoencoder_part_names_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="train.trainable=unet is a part of a latent diffusion model"):
        load_config(AutoencoderExperiment, "synthetic-kl-f4", [*AE_FAST, "train.trainable=unet"], group="autoencoder")


# --- diffusion -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ldm(tmp_path_factory, first_stage) -> Path:
    _, model = train_dm(tmp_path_factory.mktemp("ldm") / "base", first_stage)
    return model


def test_a_diffusion_run_starts_from_the_models_weights(ldm, first_stage, tmp_path):
    # lr 0: nothing moves, so the written model is the one it started from (a fresh start would differ)
    _, model = train_dm(tmp_path / "same", first_stage, f"train.init_from={ldm}", "train.lr=0")
    for name in ("unet", "conditioner"):
        before, after = load_file(str(ldm / f"{name}.safetensors")), load_file(str(model / f"{name}.safetensors"))
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before), name
    assert read_model_dir(model).extra["tokenizer"] == read_model_dir(ldm).extra["tokenizer"]


@pytest.mark.parametrize("part,frozen", [("unet", "conditioner"), ("conditioner", "unet")])
def test_diffusion_trains_only_the_chosen_part(ldm, first_stage, tmp_path, part, frozen):
    task, model = train_dm(tmp_path / part, first_stage, f"train.init_from={ldm}", f"train.trainable={part}")
    before, after = load_file(str(ldm / f"{frozen}.safetensors")), load_file(str(model / f"{frozen}.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)  # the frozen part, bit for bit
    moved = load_file(str(ldm / f"{part}.safetensors")), load_file(str(model / f"{part}.safetensors"))
    assert any(not torch.equal(moved[0][k], moved[1][k]) for k in moved[0])
    network = task.unet if frozen == "unet" else task.conditioner
    assert not any(p.requires_grad for p in network.parameters())
    trained = task.conditioner if part == "conditioner" else task.unet
    held, with_state = optimiser_entries(tmp_path / part, "model")
    assert held == with_state == len(list(trained.parameters()))


def test_diffusion_weights_of_another_architecture_are_refused_naming_the_keys(ldm, first_stage, tmp_path):
    with pytest.raises(CheckpointError) as caught:
        train_dm(tmp_path / "wide", first_stage, f"train.init_from={ldm}", "unet.model_channels=24")
    message = str(caught.value)
    assert "\n" not in message and "(unet)" in message and "mis-shaped" in message


def test_an_ldm_of_another_autoencoder_or_a_wrong_directory_is_refused(ldm, first_stage, tmp_path):
    other, _ = train_ae(tmp_path / "other-ae", "train.seed=1")
    with pytest.raises(CheckpointError, match="trained on another autoencoder"):
        train_dm(tmp_path / "x", tmp_path / "other-ae" / "model", f"train.init_from={ldm}")
    with pytest.raises(CheckpointError, match="train.init_from: .* holds a 'autoencoder' model, expected 'ldm'"):
        train_dm(tmp_path / "y", first_stage, f"train.init_from={first_stage}")
    with pytest.raises(ConfigError, match="train.trainable=decoder is a part of an autoencoder"):
        load_config(DiffusionExperiment, "synthetic-text", [*DM_FAST, "autoencoder=ae", "train.trainable=decoder"],
                    group="diffusion")
