"""train.optimizer: AdamW as before, 8-bit AdamW (bitsandbytes) on CUDA only, refused elsewhere in one line, and
Prodigy, which estimates its own step size."""

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


# --- Prodigy -----------------------------------------------------------------------------------------------------

def test_prodigy_finds_its_step_size_where_adam_at_its_start_would_barely_move():
    # f(w) = ½‖w − w*‖², w* 10 away: Prodigy starts from d0 = 1e-6 and must grow d to the distance to get there
    target = torch.full((100,), 1.0)
    w = torch.nn.Parameter(torch.zeros(100))
    opt = build_optimizer("prodigy", [w], lr=1.0, betas=(0.9, 0.999), device=torch.device("cpu"))
    assert type(opt).__name__ == "Prodigy" and opt.param_groups[0]["d"] == pytest.approx(1e-6)
    for _ in range(300):
        opt.zero_grad()
        (0.5 * (w - target).pow(2).sum()).backward()
        opt.step()
    assert opt.param_groups[0]["d"] > 1e-3  # three orders of magnitude grown from d0
    assert (w - target).norm() < 0.1 * target.norm()  # 300 Adam steps of 1e-6 would move w by 3e-4 at most


def test_prodigy_refuses_an_adam_learning_rate_and_names_its_extra(monkeypatch):
    with pytest.raises(ConfigError, match=r"estimates the step size itself and train.lr=0.0001 .* set train.lr=1.0"):
        build_optimizer("prodigy", params(), lr=1e-4, betas=(0.9, 0.999), device=torch.device("cpu"))
    monkeypatch.setitem(sys.modules, "prodigyopt", None)
    with pytest.raises(ConfigError, match=r"needs prodigyopt: pip install \"ldmkit\[prodigy\]\""):
        build_optimizer("prodigy", params(), lr=1.0, betas=(0.9, 0.999), device=torch.device("cpu"))


def test_prodigy_runs_resume_bitwise_identical(tmp_path):
    # d and its running sums live in the optimiser's param groups: a resumed run must carry them over exactly
    from tests.unit.test_training_resume import assert_same_run, run_ae

    extra = ("train.steps=6", "train.checkpoint_every=2", "loss.disc_start=2", "train.optimizer=prodigy",
             "train.lr=1.0")
    straight_log, how = run_ae(tmp_path / "straight", *extra)
    assert how == "done"
    first, how = run_ae(tmp_path / "resumed", *extra, stop_after=2)
    assert how == "preempted"
    second, how = run_ae(tmp_path / "resumed", *extra)
    assert how == "done" and first + second == straight_log
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")
