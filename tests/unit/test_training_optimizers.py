"""train.optimizer: AdamW as before, and 8-bit AdamW (bitsandbytes) on CUDA only, refused elsewhere in one line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from ldmkit.cli.main import main as ldm
from ldmkit.errors import ConfigError
from ldmkit.training.optimizers import build_optimizer
from tests.unit.test_run_dir import TINY


def params() -> list[torch.nn.Parameter]:
    return list(torch.nn.Linear(64, 64).parameters())


def test_adamw_is_torchs_adamw_and_adam_for_the_autoencoder():
    opt = build_optimizer("adamw", params(), lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01, device=torch.device("cpu"))
    assert type(opt) is torch.optim.AdamW and opt.param_groups[0]["weight_decay"] == 0.01
    adam = build_optimizer("adamw", params(), lr=1e-3, betas=(0.5, 0.9), decoupled=False, device=torch.device("cpu"))
    reference = torch.optim.Adam(params(), lr=1e-3, betas=(0.5, 0.9))
    assert type(adam) is torch.optim.Adam
    assert {k: v for k, v in adam.param_groups[0].items() if k != "params"} == \
        {k: v for k, v in reference.param_groups[0].items() if k != "params"}


def test_8bit_adamw_on_the_cpu_is_a_one_line_error_saying_where_it_runs():
    with pytest.raises(ConfigError, match="runs on CUDA GPUs only .* not on cpu: use train.optimizer=adamw"):
        build_optimizer("adamw8bit", params(), lr=1e-3, betas=(0.9, 0.999), device=torch.device("cpu"))


def test_8bit_adamw_without_bitsandbytes_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as when it is not installed
    with pytest.raises(ConfigError, match=r"needs bitsandbytes: pip install \"ldmkit\[bnb\]\""):
        build_optimizer("adamw8bit", params(), lr=1e-3, betas=(0.9, 0.999), device=torch.device("cuda"))
    with pytest.raises(ConfigError, match="cannot update sharded weights"):
        build_optimizer("adamw8bit", params(), lr=1e-3, betas=(0.9, 0.999), device=torch.device("cuda"),
                        sharded=True)


def test_the_trainer_refuses_8bit_adamw_on_the_cpu_before_training(tmp_path: Path, capsys):
    out = tmp_path / "run"
    code = ldm(["train", "autoencoder", *TINY, f"train.out={out}", "train.steps=1", "train.optimizer=adamw8bit"])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1 and "adamw8bit runs on CUDA GPUs only" in err
    assert not (out / "checkpoints").exists()


@pytest.mark.gpu
def test_8bit_adamw_trains_and_resumes_on_a_gpu(tmp_path, make_first_stage):
    pytest.importorskip("bitsandbytes")
    from ldmkit.config import load_config
    from ldmkit.data import build_dataset, dataset_captions
    from ldmkit.training.checkpoint import CheckpointManager
    from ldmkit.training.diffusion_task import DiffusionExperiment, DiffusionTask
    from ldmkit.training.loop import train
    from tests.unit.test_training_resume import DM_OVERRIDES

    first_stage = make_first_stage()

    def run(steps: int):
        overrides = [*DM_OVERRIDES, "train.device=cuda", f"train.steps={steps}", "train.checkpoint_every=2",
                     "train.optimizer=adamw8bit", "unet.model_channels=64", f"autoencoder={first_stage}",
                     f"train.out={tmp_path / 'run'}"]
        experiment = load_config(DiffusionExperiment, "synthetic-text", overrides, group="diffusion")
        dataset = build_dataset(experiment.data, split="train")
        task = DiffusionTask(experiment, dataset, dataset_captions(dataset))
        train(task, experiment.train, dataset, experiment)
        return task

    task = run(4)
    assert type(task.optimizer).__name__ == "AdamW8bit"
    states = [s for s in task.optimizer.state.values() if "state1" in s]
    assert any(s["state1"].dtype == torch.uint8 for s in states)  # large tensors keep 8-bit moments
    manager = CheckpointManager(tmp_path / "run" / "checkpoints")
    saved = manager.load_state(manager.latest())["optimizers"]["model"]

    def tensors(tree):  # bitsandbytes may nest its quantisation state one level deeper
        for value in tree.values():
            yield from tensors(value) if isinstance(value, dict) else [value]

    assert any(isinstance(v, torch.Tensor) and v.dtype == torch.uint8 for v in tensors(saved["state"]))
    resumed = run(6)  # resumes from the step-4 checkpoint with its 8-bit moments
    assert resumed.ema.updates == 6
    assert all(torch.isfinite(p).all() for p in resumed.unet.parameters())
