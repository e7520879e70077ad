"""Runs never mix and never delete what they did not write: the run-directory lock, refused places,
foreign files, config changes on resume, and model copies that never follow links."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from ldmkit.cli.main import main as ldm
from ldmkit.errors import CheckpointError
from ldmkit.io import save_model_dir
from ldmkit.training.run_config import changed_keys, check_resume_config, record_config, resumable
from ldmkit.training.run_dir import RunDirectoryError, RunLock, check_run_contents, check_run_path

TINY = ["--config", "synthetic-kl-f4", "model.base_channels=8", "model.channel_mult=[1,2]",
        "model.num_res_blocks=1", "model.latent_channels=3", "model.mid_attention=false", "loss.perceptual_weight=0",
        "loss.disc_channels=8", "loss.disc_layers=2", "data.resolution=16", "data.synthetic.count=8",
        "data.synthetic.supersample=1", "train.batch_size=4", "train.device=cpu", "train.progress=false",
        "train.image_every=0", "scale_samples=4"]


def train(out: Path | str, *overrides: str) -> int:
    return ldm(["train", "autoencoder", *TINY, f"train.out={out}", *overrides])


# --- the lock -----------------------------------------------------------------------------------------------------

def hold_lock(directory: Path) -> subprocess.Popen:
    """Another process holding the run lock until it is killed; returns once the lock is held."""
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from ldmkit.training.run_dir import RunLock
        with RunLock(Path({str(directory)!r})):
            print("locked", flush=True)
            time.sleep(3600)
    """)
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


def test_a_second_training_in_a_locked_run_directory_names_the_holder_and_touches_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = hold_lock(out)
    try:
        assert train(out, "train.steps=1") == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"in use by another training (PID {holder.pid})" in err
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # no config, checkpoint or model written
    finally:
        holder.send_signal(signal.SIGKILL)  # a killed holder leaves no stale lock
        holder.wait()
    assert train(out, "train.steps=1") == 0
    assert (out / "model" / "config.json").is_file()


def test_the_lock_is_exclusive_and_released_on_exit(tmp_path):
    with RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    with RunLock(tmp_path):  # released by the first, taken again
        pass


# --- places and files a run must not take over ---------------------------------------------------------------------

@pytest.mark.parametrize("out", ["", " ", ".", "~/", "HOME", "/"])
def test_empty_current_home_or_root_train_out_is_refused(tmp_path, monkeypatch, capsys, out):
    out = str(Path.home()) if out == "HOME" else out
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "important.txt").write_text("keep me")
    assert train(out, "train.steps=1") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give the run its own directory" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert (tmp_path / "model" / "important.txt").read_text() == "keep me"


def test_check_run_path_accepts_a_subdirectory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert check_run_path("runs/a") == Path("runs/a")
    with pytest.raises(RunDirectoryError, match="current directory"):
        check_run_path(str(tmp_path))


def test_a_directory_with_other_files_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "holiday.jpg").write_bytes(b"photo")
    assert train(tmp_path, "train.steps=1") == 2
    err = capsys.readouterr().err
    assert "holds files that no ldmkit run wrote (holiday.jpg)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "holiday.jpg"]


def test_a_model_directory_holding_other_files_is_never_replaced(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "model").mkdir(parents=True)
    (out / "model" / "important.txt").write_text("keep me")
    assert train(out, "train.steps=1") == 2
    assert "holds files that are not part of an ldmkit model (important.txt)" in capsys.readouterr().err
    assert (out / "model" / "important.txt").read_text() == "keep me"
    assert not (out / "checkpoints").exists()  # refused before any training
    # The library call that would replace it refuses too.
    with pytest.raises(CheckpointError, match="not part of an ldmkit model"):
        save_model_dir(out / "model", kind="x", config={}, weights={"m": {"w": torch.zeros(1)}})
    assert (out / "model" / "important.txt").read_text() == "keep me"


def test_a_finished_run_may_be_rerun_and_its_model_replaced(tmp_path):
    out = tmp_path / "run"
    assert train(out, "train.steps=1") == 0
    check_run_contents(out)  # the run's own entries, model included, are all accepted
    assert train(out, "train.steps=2") == 0


# --- config changes on resume -------------------------------------------------------------------------------------

def test_resuming_with_changed_run_settings_prints_them_and_keeps_every_config(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, "train.steps=2", "train.checkpoint_every=1") == 0
    capsys.readouterr()
    assert train(out, "train.steps=3", "train.checkpoint_every=1", "train.log_every=5") == 0
    printed = capsys.readouterr().out
    assert "config changed since the last start: train.log_every 10 -> 5, train.steps 2 -> 3" in printed
    history = sorted(p.name for p in (out / "config-history").iterdir())
    assert history == ["step-00000000.yaml", "step-00000002.yaml"]
    steps = [yaml.safe_load((out / "config-history" / h).read_text())["train"]["steps"] for h in history]
    assert steps == [2, 3]
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["steps"] == 3


def test_resuming_with_a_changed_learning_rate_is_refused_and_nothing_is_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, "train.steps=2", "train.checkpoint_every=1", "train.lr=1e-3") == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert train(out, "train.steps=4", "train.checkpoint_every=1", "train.lr=2e-3") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.lr 0.001 -> 0.002" in err and "put those values back" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_changed_keys_and_which_may_change_on_resume(tmp_path):
    before = {"train": {"lr": 1e-4, "steps": 10}, "model": {"mult": [1, 2]}}
    after = {"train": {"lr": 1e-4, "steps": 20}, "model": {"mult": [1, 2, 4]}, "new": 1}
    assert changed_keys(before, after) == {"model.mult": ([1, 2], [1, 2, 4]), "new": ("<missing>", 1),
                                           "train.steps": (10, 20)}
    assert resumable("train.steps") and resumable("preview.guidance") and not resumable("train.lr")
    assert not resumable("train.stepsize")  # exact keys, not text prefixes
    record_config(tmp_path, before, 0)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(before))
    with pytest.raises(RunDirectoryError, match=r"model.mult \[1, 2\] -> \[1, 2, 4\]"):
        check_resume_config(tmp_path, after, 5)


# --- model copies never follow links -------------------------------------------------------------------------------

def test_saving_an_ldm_copies_only_the_autoencoders_own_files(tmp_path, make_first_stage):
    from ldmkit.model.directory import copy_model_files
    from ldmkit.io import read_model_dir

    first_stage = make_first_stage()
    secret = tmp_path / "outside"
    secret.mkdir()
    (secret / "passwords").write_text("hunter2")
    (first_stage / "linked-dir").symlink_to(secret, target_is_directory=True)
    (first_stage / "notes.txt").write_text("not part of the model")
    copy_model_files(read_model_dir(first_stage), tmp_path / "copy")
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["config.json", "model.safetensors"]
    (first_stage / "linked-dir").unlink()
    (first_stage / "notes.txt").unlink()

    # A named file that is a link leading out of the directory is refused, not followed.
    moved = tmp_path / "model.safetensors"
    (first_stage / "model.safetensors").rename(moved)
    (first_stage / "model.safetensors").symlink_to(moved)
    with pytest.raises(CheckpointError, match="is a link out of"):
        copy_model_files(read_model_dir(first_stage), tmp_path / "copy2")
    (first_stage / "model.safetensors").unlink()
    moved.rename(first_stage / "model.safetensors")
