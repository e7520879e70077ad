"""Sharded training (train.parallel=fsdp) on CPU: two Gloo processes, a tiny text-conditioned UNet.

One two-process job runs every training: DDP and FSDP from the same seed, then resumes from each run's step-2
checkpoint under the same and under the other parallelism. Resumes reseed every rank's generators from
(seed, rank, step), so all resumes from step 2 must take the same step 3.
"""

from __future__ import annotations

import faulthandler
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from ldmkit.autoencoders import AutoencoderConfig, build_autoencoder, save_autoencoder
from ldmkit.config import load_config
from ldmkit.data import build_dataset, dataset_captions
from ldmkit.errors import ConfigError
from ldmkit.training.checkpoint import CheckpointManager
from ldmkit.training.diffusion_task import DiffusionExperiment, DiffusionTask
from ldmkit.training.fsdp import shard
from ldmkit.training.loop import train
from tests.unit.test_training_resume import assert_same

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with Gloo is needed")

OVERRIDES = [
    "data.resolution=16", "data.synthetic.count=18", "data.synthetic.supersample=1",
    "data.synthetic.shapes=[circle, square]", "data.synthetic.colours=[red, blue]",
    "unet.model_channels=16", "unet.channel_mult=[1,2]", "unet.num_res_blocks=1", "unet.attention_resolutions=[2]",
    "unet.num_head_channels=8", "conditioner.kind=class", "conditioner.num_classes=4", "conditioner.embed_dim=16",
    "conditioner.drop_prob=0.3",
    "train.batch_size=2", "train.device=cpu", "train.progress=false", "train.lr=1e-3",
    "train.checkpoint_every=2", "train.keep_last=5", "ema_decay=0.9",
    "train.image_every=2", "preview.steps=2", "preview.count=2",  # previews sample the EMA gathered on rank 0
]
TOLERANCE = (1e-4, 1e-6)  # rtol, atol: reduce-scatter vs all-reduce, the same sums in another order


class _Recording(DiffusionTask):
    """Records each step's loss."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.losses: dict[int, float] = {}

    def train_step(self, batch: dict[str, Any], step: int, ctx) -> dict[str, Any]:
        logs = super().train_step(batch, step, ctx)
        self.losses[step] = float(logs["loss"])
        return logs


def _run(out: Path, autoencoder: Path, parallel: str, steps: int, *extra: str) -> tuple[dict[int, float], Any]:
    experiment = load_config(DiffusionExperiment, "synthetic-text",
                             [*OVERRIDES, f"autoencoder={autoencoder}", f"train.out={out}",
                              f"train.parallel={parallel}", f"train.steps={steps}", *extra], group="diffusion")
    dataset = build_dataset(experiment.data, split="train")
    task = _Recording(experiment, dataset, dataset_captions(dataset))
    train(task, experiment.train, dataset, experiment)
    return task.losses, task


def _worker(rank: int, world: int, root: str, autoencoder: str) -> None:
    faulthandler.enable()  # a rank that dies of a signal prints its Python stack first
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{root}/init", rank=rank, world_size=world)
    runs, ae = Path(root), Path(autoencoder)
    try:
        losses: dict[str, dict[int, float]] = {}
        losses["ddp"], _ = _run(runs / "ddp", ae, "ddp", 2)
        losses["fsdp"], task = _run(runs / "fsdp", ae, "fsdp", 2)
        sharded = {"ema_class": type(task.ema).__name__,
                   "local_numel": sum(p.to_local().numel() for p in task.trained.parameters()),
                   "numel": sum(p.numel() for p in task.trained.parameters())}
        # Channels-last weights (the GPU default of train.channels_last) are accepted.
        conv = torch.nn.Conv2d(4, 8, 3).to(memory_format=torch.channels_last)
        sharded["channels_last"] = type(shard(conv, torch.device("cpu"))(torch.ones(1, 4, 5, 5))).__name__
        if rank == 0:  # the step-2 checkpoints, before any resume adds to them
            shutil.copytree(runs / "ddp", runs / "ddp-to-fsdp")
            shutil.copytree(runs / "fsdp", runs / "fsdp-to-ddp")
        dist.barrier()
        os.environ["LDMKIT_DEBUG_DIGEST_DIR"] = str(runs / "digests")
        losses["fsdp-resumed"], _ = _run(runs / "fsdp", ae, "fsdp", 3)
        del os.environ["LDMKIT_DEBUG_DIGEST_DIR"]
        losses["ddp-resumed"], _ = _run(runs / "ddp", ae, "ddp", 3)
        losses["ddp-to-fsdp"], _ = _run(runs / "ddp-to-fsdp", ae, "fsdp", 3)
        losses["fsdp-to-ddp"], _ = _run(runs / "fsdp-to-ddp", ae, "ddp", 3)
        if rank == 0:
            (runs / "results.json").write_text(json.dumps({"losses": losses, "sharded": sharded}))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("fsdp")
    torch.manual_seed(0)
    cfg = AutoencoderConfig(kind="kl", base_channels=8, channel_mult=(1, 2), num_res_blocks=1, latent_channels=3,
                            mid_attention=False)
    autoencoder = save_autoencoder(root / "first-stage", build_autoencoder(cfg))
    mp.spawn(_worker, args=(2, str(root), str(autoencoder)), nprocs=2, join=True)
    results = json.loads((root / "results.json").read_text())
    results["losses"] = {name: {int(k): v for k, v in log.items()} for name, log in results["losses"].items()}
    return root, results


def test_fsdp_shards_the_networks_and_the_ema(runs):
    _, results = runs
    sharded = results["sharded"]
    assert sharded["ema_class"] == "ShardedEMA"
    assert sharded["local_numel"] < 0.6 * sharded["numel"]  # about half of every parameter on each rank
    assert sharded["channels_last"] == "Tensor"


def test_fsdp_writes_previews_from_the_gathered_ema(runs):
    root, _ = runs
    assert sorted(p.name for p in (root / "fsdp" / "images").iterdir()) == ["samples-00000002.png",
                                                                           "samples-00000003.png"]


def test_fsdp_losses_match_ddp_on_the_same_seed(runs):
    _, results = runs
    ddp, fsdp = results["losses"]["ddp"], results["losses"]["fsdp"]
    assert sorted(ddp) == sorted(fsdp) == [0, 1]
    assert ddp[0] != ddp[1]  # the second step trained on updated weights
    for step in ddp:
        assert fsdp[step] == pytest.approx(ddp[step], rel=TOLERANCE[0])


def test_resume_takes_the_same_next_step_from_either_checkpoint_under_either_parallelism(runs):
    _, results = runs
    losses = results["losses"]
    reference = losses["ddp-resumed"]
    assert sorted(reference) == [2]  # resumed at step 2, trained only step 3
    for name in ("fsdp-resumed", "ddp-to-fsdp", "fsdp-to-ddp"):
        assert sorted(losses[name]) == [2], name
        assert losses[name][2] == pytest.approx(reference[2], rel=TOLERANCE[0]), name


def _state(run: Path, step: int) -> dict[str, Any]:
    path = run / "checkpoints" / f"step-{step:08d}"
    return CheckpointManager(run / "checkpoints").load_state(path)


@pytest.mark.parametrize("run,step", [("fsdp", 2), ("fsdp", 3), ("ddp-to-fsdp", 3), ("fsdp-to-ddp", 3)])
def test_checkpoints_match_ddp_in_format_and_values(runs, run, step):
    """Weights, AdamW moments and EMA after step 3 match only if every resume restored all of them."""
    root, _ = runs
    ddp, other = _state(root / "ddp", step), _state(root / run, step)
    assert set(ddp) == set(other)
    for key in ("step", "modules", "optimizers", "schedulers", "task", "data", "guard"):
        assert_same(ddp[key], other[key], f"{run} step {step}: {key}", TOLERANCE)
    assert other["task"]["ema"]["updates"] == step
    moments = other["optimizers"]["model"]
    assert sorted(moments["state"]) == list(range(len(moments["state"]))) == moments["param_groups"][0]["params"]


def test_fsdp_ranks_end_with_identical_networks(runs):
    root, _ = runs
    rank0, rank1 = (json.loads((root / "digests" / f"rank-{r}.json").read_text()) for r in (0, 1))
    assert set(rank0) == {"trained", "ema"} and rank0 == rank1


def test_fsdp_model_directory_loads_with_the_pipeline_loader(runs):
    from ldmkit.pipelines.text2img import load_pipeline

    root, _ = runs
    ddp_dir, fsdp_dir = root / "ddp" / "model", root / "fsdp" / "model"
    assert sorted(p.name for p in fsdp_dir.iterdir()) == sorted(p.name for p in ddp_dir.iterdir())
    for weights in sorted(ddp_dir.glob("*.safetensors")):
        assert_same(load_file(str(weights)), load_file(str(fsdp_dir / weights.name)), weights.name, TOLERANCE)
    ddp_info, fsdp_info = (json.loads((d / "config.json").read_text()) for d in (ddp_dir, fsdp_dir))
    assert set(fsdp_info) == set(ddp_info) and fsdp_info["config"] == ddp_info["config"]
    assert fsdp_info["files"].keys() == ddp_info["files"].keys()
    assert {k: v for k, v in fsdp_info["extra"].items() if k != "experiment"} == \
        {k: v for k, v in ddp_info["extra"].items() if k != "experiment"}
    # Checkpoint weights are written by the same code at every save.
    assert_same(load_file(str(fsdp_dir / "unet.safetensors")),
                load_file(str(root / "fsdp" / "checkpoints" / "step-00000003" / "weights" / "unet.safetensors")),
                "checkpoint unet", TOLERANCE)
    pipe = load_pipeline(fsdp_dir, device="cpu")
    images = pipe(class_label=[1], sampler="ddim", steps=2, guidance=1.0, seed=0, output="tensor",
                  progress=False)
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()


def test_autoencoder_refuses_fsdp(tmp_path):
    from ldmkit.training.autoencoder_task import AutoencoderExperiment, AutoencoderTask

    experiment = load_config(AutoencoderExperiment, "synthetic-kl-f4",
                             ["train.parallel=fsdp", f"train.out={tmp_path}"], group="autoencoder")
    with pytest.raises(ConfigError, match="train.parallel=ddp"):
        AutoencoderTask(experiment, None).setup(torch.device("cpu"), experiment.train)
