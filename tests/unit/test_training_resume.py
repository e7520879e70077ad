"""Exact resume: training N steps straight equals training k steps, stopping, and rerunning the same config.

Both trainers are checked bit for bit: every per-step loss, the final model directory and the whole state of
the last checkpoint (weights, EMA with its update count, both optimisers, LR schedulers, data position, RNG).
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from ldmkit.autoencoders import AutoencoderConfig, build_autoencoder, save_autoencoder
from ldmkit.config import load_config
from ldmkit.data import build_dataset, dataset_captions
from ldmkit.training.autoencoder_task import AutoencoderExperiment, AutoencoderTask
from ldmkit.training.checkpoint import CheckpointManager
from ldmkit.training.data_stream import BatchStream
from ldmkit.training.diffusion_task import DiffusionExperiment, DiffusionTask
from ldmkit.training.loop import Preempted, train

AE_OVERRIDES = [
    "model.base_channels=8", "model.channel_mult=[1,2]", "model.num_res_blocks=1", "model.latent_channels=3",
    "model.mid_attention=false", "loss.perceptual_weight=0", "loss.disc_channels=8", "loss.disc_layers=2",
    "data.resolution=16", "data.synthetic.count=18", "data.synthetic.supersample=1",
    "train.batch_size=4", "train.device=cpu", "train.progress=false", "train.image_every=0", "train.lr=1e-3",
    "train.warmup_steps=3", "scale_samples=8",
]


def ae_experiment(out: Path, *extra: str) -> AutoencoderExperiment:
    """A tiny KL autoencoder on 16 px synthetic shapes (the train split holds 16 images: 4 steps per epoch)."""
    return load_config(AutoencoderExperiment, "synthetic-kl-f4", [*AE_OVERRIDES, f"train.out={out}", *extra],
                       group="autoencoder")


class Recorder:
    """Mixin: records every step's logged losses and can stop the run at a chosen step (like a scheduler would)."""

    stop_after: int | None = None  # deliver SIGTERM to this process during this step
    crash_at: int | None = None  # raise (a simulated crash) at the start of this step

    def train_step(self, batch: dict[str, Any], step: int, ctx) -> dict[str, Any]:
        if step == self.crash_at:
            raise RuntimeError(f"simulated crash at step {step}")
        logs = super().train_step(batch, step, ctx)  # type: ignore[misc]
        self.log.append((step, {k: float(v) for k, v in logs.items()}))
        if step == self.stop_after:
            os.kill(os.getpid(), signal.SIGTERM)
        return logs


class RecordingAutoencoderTask(Recorder, AutoencoderTask):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.log: list[tuple[int, dict[str, float]]] = []


def run_ae(out: Path, *extra: str, stop_after: int | None = None, crash_at: int | None = None):
    experiment = ae_experiment(out, *extra)
    dataset = build_dataset(experiment.data, split="train")
    return train_recording(RecordingAutoencoderTask(experiment, dataset), experiment, dataset, stop_after, crash_at)


def train_recording(task, experiment, dataset, stop_after: int | None, crash_at: int | None):
    """Train ``task`` (a :class:`Recorder`) stopped or crashed at a step; its log and how the run ended."""
    task.stop_after, task.crash_at = stop_after, crash_at
    try:
        train(task, experiment.train, dataset, experiment)
    except Preempted:
        return task.log, "preempted"
    except RuntimeError as exc:
        if "simulated crash" not in str(exc):
            raise
        return task.log, "crashed"
    return task.log, "done"


def assert_same(a: Any, b: Any, where: str = "state", tolerance: tuple[float, float] | None = None) -> None:
    """Recursive equality of nested dicts/lists/tensors: bitwise, or within ``tolerance`` (rtol, atol)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        if tolerance is not None:
            torch.testing.assert_close(a, b, rtol=tolerance[0], atol=tolerance[1], msg=lambda m: f"{where}: {m}")
        else:
            assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                         and torch.equal(a.nan_to_num(), b.nan_to_num())), f"{where} differs"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {sorted(map(str, a))} != {sorted(map(str, b))}"
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}", tolerance)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]", tolerance)
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def model_weights(model_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.name: load_file(str(p)) for p in sorted(model_dir.glob("*.safetensors"))}


def assert_same_run(a: Path, b: Path) -> None:
    """Final model directories and the last checkpoints (weights + full training state) are identical."""
    weights_a = model_weights(a / "model")
    assert weights_a, f"no weights in {a / 'model'}"
    assert_same(weights_a, model_weights(b / "model"), "model")
    manager_a, manager_b = CheckpointManager(a / "checkpoints"), CheckpointManager(b / "checkpoints")
    last_a, last_b = manager_a.latest(), manager_b.latest()
    assert last_a is not None and last_b is not None and last_a.name == last_b.name
    assert_same(model_weights(last_a / "weights"), model_weights(last_b / "weights"), "checkpoint weights")
    assert_same(manager_a.load_state(last_a), manager_b.load_state(last_b), "checkpoint state")


@pytest.fixture(scope="module")
def ae_straight(tmp_path_factory):
    """10 steps (2.5 epochs), discriminator on from step 3, checkpoints every 3 steps."""
    out = tmp_path_factory.mktemp("ae") / "straight"
    log, how = run_ae(out, "train.steps=10", "train.checkpoint_every=3", "loss.disc_start=3")
    assert how == "done" and [s for s, _ in log] == list(range(10))
    assert "d_loss" in log[-1][1] and "d_loss" not in log[0][1]  # the discriminator phase is inside the run
    return out, log


@pytest.mark.parametrize("stop_after", [1, 3, 7])  # before/at the discriminator start; at an epoch boundary (3→4)
def test_autoencoder_preempted_and_rerun_is_bitwise_identical(ae_straight, tmp_path, stop_after):
    straight, straight_log = ae_straight
    out = tmp_path / "resumed"
    first, how = run_ae(out, "train.steps=10", "train.checkpoint_every=3", "loss.disc_start=3",
                        stop_after=stop_after)
    assert how == "preempted"
    assert CheckpointManager(out / "checkpoints").latest().name == f"step-{stop_after + 1:08d}"
    assert not (out / "model").exists()
    second, how = run_ae(out, "train.steps=10", "train.checkpoint_every=3", "loss.disc_start=3")
    assert how == "done"
    assert first + second == straight_log  # every step once, with bitwise-equal losses
    assert_same_run(straight, out)


def test_autoencoder_crash_resumes_from_last_checkpoint(ae_straight, tmp_path):
    straight, straight_log = ae_straight
    out = tmp_path / "crashed"
    first, how = run_ae(out, "train.steps=10", "train.checkpoint_every=3", "loss.disc_start=3", crash_at=8)
    assert how == "crashed" and len(first) == 8
    second, how = run_ae(out, "train.steps=10", "train.checkpoint_every=3", "loss.disc_start=3")
    assert how == "done"
    assert [s for s, _ in second] == [6, 7, 8, 9]  # steps 6 and 7 (after the step-6 checkpoint) are redone
    assert second == straight_log[6:]
    assert_same_run(straight, out)


def test_rerun_of_a_finished_run_changes_nothing(ae_straight, tmp_path):
    straight, _ = ae_straight
    out = tmp_path / "copy"
    shutil.copytree(straight, out)
    log, how = run_ae(out, "train.steps=10", "train.checkpoint_every=3", "loss.disc_start=3")
    assert how == "done" and log == []
    assert_same_run(straight, out)


# --- diffusion ---------------------------------------------------------------------------------------------------


DM_OVERRIDES = [
    "data.resolution=16", "data.synthetic.count=18", "data.synthetic.supersample=1",
    "unet.model_channels=16", "unet.channel_mult=[1,2]", "unet.num_res_blocks=1", "unet.attention_resolutions=[2]",
    "unet.num_head_channels=8", "conditioner.embed_dim=16", "conditioner.text.width=16", "conditioner.text.depth=1",
    "conditioner.text.heads=2", "conditioner.text.max_length=8", "conditioner.drop_prob=0.3",
    "train.batch_size=4", "train.device=cpu", "train.progress=false", "train.image_every=0", "train.lr=1e-3",
    "train.warmup_steps=3", "train.steps=9", "train.checkpoint_every=4", "ema_decay=0.9",
]


@pytest.fixture(scope="module")
def autoencoder_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = AutoencoderConfig(kind="kl", base_channels=8, channel_mult=(1, 2), num_res_blocks=1, latent_channels=3,
                            mid_attention=False)
    return save_autoencoder(tmp_path_factory.mktemp("first-stage") / "model", build_autoencoder(cfg))


class RecordingDiffusionTask(Recorder, DiffusionTask):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.log: list[tuple[int, dict[str, float]]] = []


def run_dm(out: Path, autoencoder: Path, stop_after: int | None = None, crash_at: int | None = None):
    experiment = load_config(DiffusionExperiment, "synthetic-text",
                             [*DM_OVERRIDES, f"autoencoder={autoencoder}", f"train.out={out}"], group="diffusion")
    dataset = build_dataset(experiment.data, split="train")
    task = RecordingDiffusionTask(experiment, dataset, dataset_captions(dataset))
    return train_recording(task, experiment, dataset, stop_after, crash_at)


@pytest.fixture(scope="module")
def dm_straight(tmp_path_factory, autoencoder_dir):
    out = tmp_path_factory.mktemp("dm") / "straight"
    log, how = run_dm(out, autoencoder_dir)
    assert how == "done" and [s for s, _ in log] == list(range(9))
    return out, log


@pytest.mark.parametrize("stop_after,crash_at", [(2, None), (None, 7)])
def test_diffusion_resume_is_bitwise_identical(dm_straight, autoencoder_dir, tmp_path, stop_after, crash_at):
    straight, straight_log = dm_straight
    out = tmp_path / "resumed"
    first, how = run_dm(out, autoencoder_dir, stop_after=stop_after, crash_at=crash_at)
    assert how == ("preempted" if stop_after is not None else "crashed")
    second, how = run_dm(out, autoencoder_dir)
    assert how == "done"
    resumed_at = second[0][0]
    assert resumed_at == (stop_after + 1 if stop_after is not None else 4)
    assert first[:resumed_at] + second == straight_log
    assert_same_run(straight, out)
    state = CheckpointManager(out / "checkpoints").load_state(CheckpointManager(out / "checkpoints").latest())
    assert state["task"]["ema"]["updates"] == 9  # the EMA's warm-up counter survived the restart
    assert state["schedulers"]["model"]["last_epoch"] == 9


# --- data position ------------------------------------------------------------------------------------------------



class _Numbers(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 10  # batches of 4: two per epoch, the last 2 samples dropped

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": torch.tensor(i)}


@pytest.mark.parametrize("stop", [1, 2, 3, 4])  # 2 and 4: stopped at an epoch's end (inside its dropped tail)
def test_batch_stream_resumes_at_the_exact_batch(stop):
    straight = iter(BatchStream(_Numbers(), 4, seed=3))
    expected = [next(straight)["x"].tolist() for _ in range(7)]
    first = BatchStream(_Numbers(), 4, seed=3)
    batches = iter(first)
    got = [next(batches)["x"].tolist() for _ in range(stop)]
    resumed = BatchStream(_Numbers(), 4, seed=3)
    resumed.load_state_dict(first.state_dict())
    batches = iter(resumed)
    got += [next(batches)["x"].tolist() for _ in range(7 - stop)]
    assert got == expected
