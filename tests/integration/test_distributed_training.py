"""Data-parallel training on CPU: two processes under torchrun (Gloo) for both trainers.

Each rank sees different data, so the ranks end with identical weights only if gradients were averaged and
both started from the same weights; each rank writes a digest of its networks (LDMKIT_DEBUG_DIGEST_DIR).
"""

import argparse
import json
import os
import subprocess
import sys
import weakref

import pytest
import torch
import torch.distributed

from ldmkit.cli.train import _launch_command

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with Gloo is needed")

SYNTHETIC = [
    "data.resolution=16", "data.synthetic.count=32", "data.synthetic.shapes=[circle, square]",
    "data.synthetic.colours=[red, blue]", "data.synthetic.sizes=[large]", "data.synthetic.max_objects=1",
    "data.synthetic.backgrounds=[white]",
]
TRAIN = ["train.device=cpu", "train.progress=false", "train.image_every=0", "train.log_every=1",
         "train.batch_size=4", "train.checkpoint_every=0"]
AUTOENCODER = ["model.base_channels=8", "model.channel_mult=[1, 2]", "loss.perceptual_weight=0", "scale_samples=8",
               # adversarial terms and a learned log-variance on from step 1: every gradient path runs under DDP
               "loss.disc_start=1", "loss.disc_layers=1", "loss.learn_logvar=true"]
TINY_UNET = ["unet.model_channels=16", "unet.channel_mult=[1, 2]", "unet.attention_resolutions=[2]",
             "unet.num_head_channels=8", "unet.num_res_blocks=1"]


# Seconds after which a run that has not finished is a hang, not a slow machine.
HANG = 600


def _torchrun(args: list[str], digest_dir, timeout: float = HANG) -> subprocess.CompletedProcess:
    # PYTHONFAULTHANDLER: a rank that dies of a signal prints its Python stack first.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LDMKIT_DEBUG_DIGEST_DIR": str(digest_dir), "PYTHONFAULTHANDLER": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "ldmkit.cli.main", "train", *args]
    result = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-12000:]
    return result


def _digests(directory) -> list[dict[str, str]]:
    return [json.loads((directory / f"rank-{r}.json").read_text()) for r in (0, 1)]


def _checkpoint_state(run_dir) -> dict:
    (checkpoint,) = sorted((run_dir / "checkpoints").glob("step-*"))[-1:]
    return torch.load(checkpoint / "state.pt", weights_only=True)


@pytest.fixture(scope="module")
def autoencoder_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp-ae")
    out = root / "run"
    result = _torchrun(["autoencoder", "--config", "synthetic-kl-f4", *SYNTHETIC, *TRAIN, *AUTOENCODER,
                        f"train.out={out}", "train.steps=2"], root / "digests")
    return root, out, result


def test_autoencoder_ranks_end_identical_and_one_model_is_written(autoencoder_run):
    root, out, result = autoencoder_run
    rank0, rank1 = _digests(root / "digests")
    assert set(rank0) == {"model", "loss"} and rank0 == rank1
    assert (out / "model" / "config.json").is_file()
    assert result.stdout.count("model written to") == 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002"]
    # Checkpoints hold plain state-dict keys, so they resume with any number of processes.
    state = _checkpoint_state(out)
    keys = [k for module in state["modules"].values() for k in module]
    assert keys and not any(k.startswith("module.") or ".module." in k for k in keys)
    assert any(k.startswith("discriminator.") for k in state["modules"]["loss"])


def test_autoencoder_resumes_on_every_rank(autoencoder_run):
    root, out, _ = autoencoder_run
    result = _torchrun(["autoencoder", "--config", "synthetic-kl-f4", *SYNTHETIC, *TRAIN, *AUTOENCODER,
                        f"train.out={out}", "train.steps=3"], root / "digests-resumed")
    assert "from step 2" in result.stdout
    rank0, rank1 = _digests(root / "digests-resumed")
    assert rank0 == rank1 and rank0 != _digests(root / "digests")[0]
    assert _checkpoint_state(out)["step"] == 3


def test_diffusion_ranks_end_identical_with_a_trained_conditioner(tmp_path, autoencoder_run):
    _, ae_out, _ = autoencoder_run
    out = tmp_path / "ldm"
    result = _torchrun(["diffusion", "--config", "synthetic-text", f"autoencoder={ae_out / 'model'}", *SYNTHETIC,
                        *TRAIN, *TINY_UNET, f"train.out={out}", "train.steps=2", "conditioner.kind=class",
                        "conditioner.num_classes=4", "conditioner.embed_dim=16"], tmp_path / "digests")
    rank0, rank1 = _digests(tmp_path / "digests")
    assert set(rank0) == {"trained", "ema"} and rank0 == rank1
    assert result.stdout.count("model written to") == 1
    assert (out / "model").is_dir()
    state = _checkpoint_state(out)
    assert any(k.startswith("conditioner.") for k in state["modules"]["trained"])
    assert not any(k.startswith("module.") for k in state["modules"]["trained"])


def test_gpus_option_relaunches_through_torchrun():
    from argparse import Namespace

    args = Namespace(gpus=4, verb_name="diffusion", config="synthetic-text", overrides=["train.lr=1e-4"])
    command = _launch_command(args)
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert command[command.index("--nproc-per-node") + 1] == "4"
    assert command[command.index("-m", 3):] == ["-m", "ldmkit.cli.main", "train", "diffusion", "--config",
                                                "synthetic-text", "train.lr=1e-4"]
    assert "--gpus" not in command


def test_sigterm_stops_every_rank_at_the_same_step_with_a_checkpoint(tmp_path):
    import re
    import signal
    import time

    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "ldmkit.cli.main", "train", "autoencoder", "--config", "synthetic-kl-f4", *SYNTHETIC, *TRAIN,
               "model.base_channels=8", "model.channel_mult=[1, 2]", "loss.perceptual_weight=0",
               f"train.out={out}", "train.steps=100000", "train.checkpoint_every=5"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + HANG  # the run has 100000 steps: only a hang keeps it from a checkpoint
        while not list((out / "checkpoints").glob("step-*")) and process.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint was written"
            time.sleep(0.2)
        assert process.poll() is None, process.communicate()[0][-3000:]
        process.send_signal(signal.SIGTERM)  # torchrun forwards it to both workers
        output, _ = process.communicate(timeout=HANG)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stops = re.findall(r"stopped by signal at step (\d+)", output)
    assert len(stops) == 2 and stops[0] == stops[1], output[-3000:]
    assert (out / "checkpoints" / f"step-{int(stops[0]):08d}" / "MANIFEST.json").is_file()
    assert not (out / "model").exists()


def test_helpers_are_no_ops_in_one_process(monkeypatch):
    from ldmkit.training import distributed

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    module = torch.nn.Linear(2, 2)
    cpu = torch.device("cpu")
    assert distributed.wrap(module, cpu) is module
    assert distributed.unwrap(module) is module
    assert distributed.local_device(cpu) == cpu
    assert distributed.any_rank(True, False, device=cpu) == (True, False)
    assert distributed.same_on_all_ranks(7, cpu)
    with distributed.process_group(cpu):
        assert not distributed.is_distributed()
    seeds = set()
    for r in range(3):
        monkeypatch.setenv("RANK", str(r))
        seeds |= {distributed.rank_seed(0, 0), distributed.rank_seed(0, 5)}
    assert len(seeds) == 6


@pytest.mark.parametrize("backend, raised, expected", [
    ("nccl", RuntimeError("CUDA out of memory"), ["abort"]),  # peers wait in a collective: never a graceful leave
    ("gloo", RuntimeError("CUDA out of memory"), ["destroy"]),
    # preemption: every rank stopped at the same step, so all can leave together
    ("nccl", SystemExit(143), ["barrier", "destroy"]),
    ("nccl", None, ["barrier", "destroy"]),
])
def test_a_failing_rank_leaves_the_group_without_waiting_for_its_peers(monkeypatch, backend, raised, expected):
    from ldmkit.training import distributed

    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kwargs: calls.append("init"))
    monkeypatch.setattr(distributed.dist, "get_backend", lambda: backend)
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: calls.append("destroy"))
    monkeypatch.setattr(distributed.dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(distributed.dist.distributed_c10d, "_abort_process_group", lambda: calls.append("abort"))
    device = torch.device("cuda" if backend == "nccl" else "cpu")
    if raised is None:
        with distributed.process_group(device):
            pass
    else:
        with pytest.raises(type(raised)), distributed.process_group(device):
            raise raised
    assert calls == ["init", *expected]


def test_the_command_line_frees_process_group_holders_before_shutdown(monkeypatch):
    # A DDP wrapper caught in a reference cycle would otherwise outlive the interpreter's last moments, where
    # Gloo's worker threads abort the process that trained successfully.
    import gc

    from ldmkit.cli import main as cli
    from ldmkit.training import distributed  # noqa: F401  (loaded, as by every training command)

    class Holder:  # stands for a wrapper that holds the process group
        pass

    def command(args):
        cycle = Holder()
        cycle.me = cycle
        collected.append(weakref.ref(cycle))
        return 0

    collected = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    gc.disable()
    try:
        parser = cli.build_parser()
        monkeypatch.setattr(cli, "build_parser", lambda: parser)
        monkeypatch.setattr(parser, "parse_args", lambda argv: argparse.Namespace(handler=command, command="x"))
        assert cli.main([]) == 0
        assert collected[0]() is None
    finally:
        gc.enable()
