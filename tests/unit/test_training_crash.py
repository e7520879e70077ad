"""Preemption and crash survival of `ldm train autoencoder`, run as a real process.

- SIGTERM after a checkpoint: exit status 143, a complete checkpoint at the step reached, and a rerun that
  finishes with the same final weights as an uninterrupted run. Ctrl-C (SIGINT) saves the same way and exits
  with status 130.
- SIGKILL at random moments (during start-up, training steps, checkpoint writes and pruning), 20 times in
  a row on one run directory: each rerun resumes from the last complete checkpoint, and the run ends with
  weights bitwise equal to an uninterrupted run.

The interrupted runs are asked for far more steps than they can reach, so every signal lands however fast
the machine is; once the signals are sent, the same run is resumed with a reachable ``train.steps`` and
compared with an uninterrupted run of that length. Timeouts only guard against hangs.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ldmkit.training.checkpoint import CheckpointManager

STEPS = 80
ENDLESS = 10**9  # train.steps of an interrupted run: it never ends before its signal
HANG = 600.0  # seconds after which a run that makes no progress is a failure
OVERRIDES = [
    "model.base_channels=8", "model.channel_mult=[1,2]", "model.num_res_blocks=1", "model.latent_channels=3",
    "model.mid_attention=false", "loss.perceptual_weight=0", "loss.disc_channels=8", "loss.disc_layers=2",
    "loss.disc_start=3", "data.resolution=16", "data.synthetic.count=18", "data.synthetic.supersample=1",
    "train.batch_size=4", "train.device=cpu", "train.progress=false", "train.image_every=0", "train.lr=1e-3",
    "train.checkpoint_every=1", "train.log_every=1000", "scale_samples=8",
]
TRIALS = 20


def start(out: Path, steps: int = ENDLESS) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "ldmkit.cli.main", "train", "autoencoder", "--config", "synthetic-kl-f4",
               *OVERRIDES, f"train.steps={steps}", f"train.out={out}"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def finish(process: subprocess.Popen, timeout: float = HANG) -> tuple[int, str]:
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def complete_steps(out: Path) -> list[int]:
    return [step for step, _ in CheckpointManager(out / "checkpoints").complete()]


def staging_dirs(out: Path) -> list[str]:
    directory = out / "checkpoints"
    return [p.name for p in directory.iterdir() if p.name.startswith(".")] if directory.is_dir() else []


def resumed_from(output: str) -> int | None:
    match = re.search(r"resuming .* from step (\d+)", output)
    return int(match.group(1)) if match else None


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    found = {f"{p.name}/{k}": v for p in sorted(model_dir.glob("*.safetensors")) for k, v in load_file(str(p)).items()}
    assert found, f"no weights in {model_dir}"
    return found


def assert_same_result(reference: Path, out: Path, steps: int) -> None:
    a, b = weights(reference / "model"), weights(out / "model")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "final weights differ from the uninterrupted run"
    ma, mb = CheckpointManager(reference / "checkpoints"), CheckpointManager(out / "checkpoints")
    sa, sb = ma.load_state(ma.latest()), mb.load_state(mb.latest())
    assert sa["step"] == sb["step"] == steps
    assert sa["data"] == sb["data"]
    assert torch.equal(sa["rng"]["torch"], sb["rng"]["torch"])
    for name in ("generator", "discriminator"):
        for key, value in sa["optimizers"][name]["state"].items():
            assert all(torch.equal(value[k], sb["optimizers"][name]["state"][key][k]) for k in ("exp_avg", "step"))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """``reference_run(steps)`` starts an uninterrupted run of ``steps`` steps in the background (once per
    length) and returns a function that waits for it and gives its run directory."""
    processes: dict[int, tuple[subprocess.Popen, Path]] = {}

    def begin(steps: int):
        if steps not in processes:
            out = tmp_path_factory.mktemp(f"reference-{steps}") / "run"
            processes[steps] = start(out, steps), out
        process, out = processes[steps]

        def wait() -> Path:
            if process.returncode is None:
                code, output = finish(process)
                assert code == 0, output
            return out

        return wait

    yield begin
    for process, _ in processes.values():
        if process.poll() is None:
            process.kill()
            process.wait()


def wait_for(predicate, process: subprocess.Popen, timeout: float = HANG, poll: float = 0.002) -> bool:
    """Poll ``predicate`` until true; False when the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if process.poll() is not None:
            return False
        time.sleep(poll)
    raise TimeoutError("the training process made no progress")


@pytest.mark.slow
@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_exits_and_rerun_matches(reference_run, tmp_path, sig, status):
    reference_run(STEPS)  # the likely comparison run, started while this one is interrupted
    out = tmp_path / "run"
    process = start(out)
    assert wait_for(lambda: len(complete_steps(out)) >= 1, process)
    process.send_signal(sig)
    code, output = finish(process)
    assert code == status, output
    stopped = int(re.search(r"stopped by signal at step (\d+)", output).group(1))
    assert stopped >= 1
    manager = CheckpointManager(out / "checkpoints")
    assert manager.latest().name == f"step-{stopped:08d}"
    assert manager.load_state(manager.latest())["step"] == stopped  # complete: every file matches the manifest
    assert not (out / "model").exists()
    steps = STEPS if stopped < STEPS else stopped + 5  # a machine fast enough to pass STEPS before the signal
    code, output = finish(start(out, steps))
    assert code == 0, output
    assert resumed_from(output) == stopped
    assert_same_result(reference_run(steps)(), out, steps)


@pytest.mark.slow
def test_sigkill_at_random_moments_never_loses_work(reference_run, tmp_path):
    out = tmp_path / "run"
    rng = random.Random(1234)
    during_save = checked_resumes = 0
    expected_resume: int | None = None
    for trial in range(TRIALS):
        process = start(out)
        before = max(complete_steps(out), default=0)
        mode = trial % 3
        if mode == 0:  # during a checkpoint write or prune: a hidden staging/trash directory exists
            ok = wait_for(lambda b=before: max(complete_steps(out), default=0) > b and bool(staging_dirs(out)), process)
        elif mode == 1:  # a random moment after training has started
            target = before + rng.randint(1, 2)
            ok = wait_for(lambda t=target: max(complete_steps(out), default=0) >= t, process)
            time.sleep(rng.uniform(0.0, 0.4))
        else:  # a random moment from the start (during start-up, resume or the first steps)
            ok = True
            time.sleep(rng.uniform(1.0, 7.0))
        if not ok or process.poll() is not None:
            pytest.fail(f"trial {trial}: the run ended before it was killed:\n{finish(process)[1][-3000:]}")
        process.send_signal(signal.SIGKILL)
        code, output = finish(process)
        assert code == -signal.SIGKILL
        resumed = resumed_from(output)
        if resumed is not None or max(complete_steps(out), default=0) > before:  # it got as far as resuming
            assert resumed == expected_resume, f"trial {trial}: {output}"
            checked_resumes += expected_resume is not None
        during_save += bool(staging_dirs(out))
        manager = CheckpointManager(out / "checkpoints")
        for _, path in manager.complete():  # every checkpoint that looks complete is complete
            manager.verify(path)
        expected_resume = manager.latest() and int(manager.latest().name.split("-")[1])
    assert during_save >= 3, "too few kills landed inside a checkpoint write"
    assert checked_resumes >= TRIALS // 2
    print(f"{TRIALS} kills, {during_save} inside a checkpoint write, {checked_resumes} resumes checked")
    steps = expected_resume + 5  # a few steps past the last kill, run uninterrupted alongside for comparison
    reference = reference_run(steps)
    code, output = finish(start(out, steps))
    assert code == 0, output
    assert resumed_from(output) == expected_resume
    assert not staging_dirs(out)  # leftovers of killed saves were cleaned up
    assert_same_result(reference(), out, steps)
