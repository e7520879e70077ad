"""train.compile and train.compile_mode reach torch.compile in the diffusion trainer; the trainers that do not
compile refuse the option in one line instead of ignoring it."""

from __future__ import annotations

import pytest

from ldmkit.errors import ConfigError
from ldmkit.training import diffusion_task
from tests.unit.test_training_init_from import train_ae, train_dm


@pytest.fixture(scope="module")
def first_stage(tmp_path_factory):
    return train_ae(tmp_path_factory.mktemp("ae") / "ae")[1]


def test_the_diffusion_trainer_compiles_its_unet_in_the_chosen_mode(first_stage, tmp_path, monkeypatch):
    calls = []

    def compile(module, **kwargs):  # records the call; the module runs as it is (no compile time in the suite)
        calls.append((type(module).__name__, kwargs))
        return module

    monkeypatch.setattr(diffusion_task.torch, "compile", compile)
    task, _ = train_dm(tmp_path / "dm", first_stage, "train.compile=true", "train.compile_mode=reduce-overhead")
    assert calls == [("UNet", {"mode": "reduce-overhead"})]
    assert task.network is task.unet  # what the (stand-in) compile returned is what trains


def test_a_compile_mode_outside_torchs_is_refused(first_stage, tmp_path):
    with pytest.raises(ConfigError, match="compile_mode"):
        train_dm(tmp_path / "dm", first_stage, "train.compile=true", "train.compile_mode=fastest")


def test_the_autoencoder_trainer_refuses_train_compile_rather_than_ignoring_it(tmp_path):
    with pytest.raises(ConfigError, match="train.compile is not supported by the autoencoder trainer"):
        train_ae(tmp_path / "ae", "train.compile=true")
    assert not (tmp_path / "ae" / "checkpoints").exists()  # refused before anything was trained or written
