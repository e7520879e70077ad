"""Gradient accumulation: N micro-batches of B make the update one batch of N·B makes, and resume stays exact."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from ldmkit.config import load_config
from ldmkit.data import build_dataset, dataset_captions
from ldmkit.training.checkpoint import CheckpointManager
from ldmkit.training.config import TrainConfig
from ldmkit.training.diffusion_task import DiffusionExperiment, DiffusionTask
from ldmkit.training.distributed import no_sync, wrap
from ldmkit.training.loop import Preempted, StepContext, Task, train
from tests.unit.test_training_resume import DM_OVERRIDES, assert_same, assert_same_run, autoencoder_dir  # noqa: F401


class Regression(Task):
    """A tiny MLP fitted to a fixed target with AdamW; ``noisy`` adds input noise, so the RNG matters too."""

    name = "regression"

    def __init__(self, noisy: bool = False):
        self.noisy = noisy
        self.losses: list[tuple[int, int, float]] = []  # (step, micro-batch, loss)

    def setup(self, device, train_cfg):
        self.model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=0.05, weight_decay=0.01)

    def optimizers(self):
        return {"model": self.opt}

    def modules(self):
        return {"model": self.model}

    def train_step(self, batch, step, ctx: StepContext):
        x = batch["x"]
        if self.noisy:
            x = x + 0.1 * torch.randn_like(x)
        loss = (self.model(x).squeeze(1) - batch["y"]).pow(2).mean()  # the mean over the (micro-)batch
        grad_norm = ctx.step("model", loss)
        self.losses.append((step, ctx.micro, float(loss.detach())))
        return {"loss": loss.detach(), "grad_norm": grad_norm}

    def write_model(self, directory):
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        save_file(self.model.state_dict(), str(directory / "model.safetensors"))


class Pairs(torch.utils.data.Dataset):
    """16 (x, y) pairs; the ``trap``-th item read signals Ctrl-C and fails, as a data-loader worker does on Ctrl-C
    (without workers items are read one at a time, as the loop asks for batches)."""

    def __init__(self, trap: int | None = None):
        self.trap = trap
        self.reads = 0

    def __len__(self):
        return 16

    def __getitem__(self, i):
        self.reads += 1
        if self.reads - 1 == self.trap:
            os.kill(os.getpid(), signal.SIGINT)
            raise RuntimeError("worker interrupted")
        x = torch.linspace(-1, 1, 4) * (i + 1) / 8
        return {"x": x, "y": torch.tensor(float(i % 3) - 1.0)}


def run(tmp_path: Path, name: str, *, trap: int | None = None, noisy: bool = False, **kw):
    cfg = TrainConfig(**{"out": str(tmp_path / name), "steps": 6, "device": "cpu", "progress": False,
                         "image_every": 0, "checkpoint_every": 0, "grad_clip": 0.5, **kw})
    task = Regression(noisy)
    try:
        train(task, cfg, Pairs(trap), cfg)
    except Preempted as stop:
        return task, stop.code
    return task, "done"


def test_micro_batches_make_the_update_of_one_big_batch(tmp_path):
    big, _ = run(tmp_path, "big", batch_size=8)
    micro, _ = run(tmp_path, "micro", batch_size=4, accumulate=2)
    small, _ = run(tmp_path, "small", batch_size=4)
    for a, b in zip(big.model.parameters(), micro.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    # the same micro-batches without accumulation take twice the updates: another model
    assert not all(torch.allclose(a, b, atol=1e-3) for a, b in zip(big.model.parameters(), small.model.parameters()))
    assert [m for _, m, _ in micro.losses] == [0, 1] * 6
    state = CheckpointManager(tmp_path / "micro" / "checkpoints").load_state(
        CheckpointManager(tmp_path / "micro" / "checkpoints").latest())
    assert state["schedulers"]["model"]["last_epoch"] == 6  # one schedule step per update, not per micro-batch
    assert 16 * state["data"]["epoch"] + state["data"]["offset"] == 48  # 6 updates x 8 samples


def test_a_stop_in_the_middle_of_an_update_resumes_exactly(tmp_path):
    straight, _ = run(tmp_path, "straight", batch_size=4, accumulate=2, noisy=True)
    # read 21 is the second item of update 2's second micro-batch (update k reads 8k .. 8k + 7)
    first, code = run(tmp_path, "resumed", batch_size=4, accumulate=2, noisy=True, trap=21)
    assert code == 130
    manager = CheckpointManager(tmp_path / "resumed" / "checkpoints")
    assert manager.latest().name == "step-00000002"  # saved as the update began: its first micro-batch is redone
    second, code = run(tmp_path, "resumed", batch_size=4, accumulate=2, noisy=True)
    assert code == "done"
    assert second.losses[0][:2] == (2, 0)
    assert first.losses[:4] + second.losses == straight.losses  # bitwise-equal losses, every micro-batch once
    assert_same(dict(straight.model.state_dict()), dict(second.model.state_dict()), "weights")


def test_the_diffusion_trainer_resumes_bitwise_when_stopped_inside_an_update(tmp_path, autoencoder_dir):
    class Stopping(DiffusionTask):
        stop_at: tuple[int, int] | None = None

        def train_step(self, batch, step, ctx):
            logs = super().train_step(batch, step, ctx)
            self.log.append((step, ctx.micro, float(logs["loss"])))
            if (step, ctx.micro) == self.stop_at:
                os.kill(os.getpid(), signal.SIGTERM)
            return logs

    def run_dm(out: Path, stop_at=None):
        experiment = load_config(DiffusionExperiment, "synthetic-text",
                                 [*DM_OVERRIDES, "train.steps=5", "train.accumulate=2",
                                  f"autoencoder={autoencoder_dir}", f"train.out={out}"], group="diffusion")
        dataset = build_dataset(experiment.data, split="train")
        task = Stopping(experiment, dataset, dataset_captions(dataset))
        task.log, task.stop_at = [], stop_at
        try:
            train(task, experiment.train, dataset, experiment)
        except Preempted:
            return task, "preempted"
        return task, "done"

    straight, how = run_dm(tmp_path / "straight")
    assert how == "done" and len(straight.log) == 10
    first, how = run_dm(tmp_path / "resumed", stop_at=(1, 0))  # the signal comes during an update's first half
    assert how == "preempted" and first.log[-1][:2] == (1, 1)  # the update was finished before saving
    second, how = run_dm(tmp_path / "resumed")
    assert how == "done" and first.log + second.log == straight.log
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")
    state = CheckpointManager(tmp_path / "resumed" / "checkpoints").load_state(
        CheckpointManager(tmp_path / "resumed" / "checkpoints").latest())
    assert state["task"]["ema"]["updates"] == 5  # one EMA update per optimiser update


class DataParallelRegression(Regression):
    """The regression in DistributedDataParallel, skipping the gradient averaging inside an update."""

    def setup(self, device, train_cfg):
        super().setup(device, train_cfg)
        self.network = wrap(self.model, device)

    def train_step(self, batch, step, ctx: StepContext):
        loss = (self.network(batch["x"]).squeeze(1) - batch["y"]).pow(2).mean()
        return {"loss": loss.detach(), "grad_norm": ctx.step("model", loss)}

    def no_sync(self):
        return no_sync(self.network)


def _ddp_worker(rank: int, world: int, root: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{root}/init", rank=rank, world_size=world)
    try:
        cfg = TrainConfig(out=f"{root}/ddp", steps=6, batch_size=2, accumulate=2, device="cpu", progress=False,
                          image_every=0, checkpoint_every=0, grad_clip=0.5)
        train(DataParallelRegression(), cfg, Pairs(), cfg)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed (Gloo)")
def test_two_processes_accumulating_make_the_update_of_one_big_batch(tmp_path):
    # 2 processes x 2 micro-batches x 2 samples: the 8 samples one process takes in a batch of 8
    mp.spawn(_ddp_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    big, _ = run(tmp_path, "big", batch_size=8)
    got = load_file(str(tmp_path / "ddp" / "model" / "model.safetensors"))
    for key, value in big.model.state_dict().items():
        assert torch.allclose(got[key], value, atol=1e-6, rtol=1e-5), key


def test_accumulate_must_be_positive():
    from ldmkit.config import from_dict
    from ldmkit.errors import ConfigError

    with pytest.raises(ConfigError, match="train.accumulate"):
        from_dict(DiffusionExperiment, {"autoencoder": "ae", "train": {"accumulate": 0}})
