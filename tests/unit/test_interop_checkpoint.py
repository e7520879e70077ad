"""Pickled checkpoints are read without running their code: tensors come back, Lightning's and numpy's objects
are left out and named, a pickle that would call os.system is refused, a truncated file is one line."""

from __future__ import annotations

import collections
import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from ldmkit.errors import CheckpointError
from ldmkit.interop.safe_checkpoint import load_checkpoint


class _RunsCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _CallsPrint:
    def __reduce__(self):
        return (print, ("this must not be printed",))


@pytest.fixture()
def lightning_class(monkeypatch):
    """A class importable as pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint, as old SD files store."""
    name = "pytorch_lightning.callbacks.model_checkpoint"
    module = types.ModuleType(name)

    class ModelCheckpoint:
        pass

    ModelCheckpoint.__module__ = name
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint
    for part in ("pytorch_lightning", "pytorch_lightning.callbacks"):
        monkeypatch.setitem(sys.modules, part, types.ModuleType(part))
    monkeypatch.setitem(sys.modules, name, module)
    return ModelCheckpoint


def test_lightning_checkpoint_gives_its_tensors_and_names_what_it_left_out(tmp_path, lightning_class, capsys):
    path = tmp_path / "model.ckpt"
    state = collections.OrderedDict({"model.diffusion_model.out.2.weight": torch.randn(4, 8, 3, 3)})
    torch.save({"state_dict": state, "global_step": 470000, "callbacks": {lightning_class: {"best": np.float64(0.1)}},
                "hook": _CallsPrint()}, path)
    ckpt = load_checkpoint(path)
    assert torch.equal(ckpt.tensors["model.diffusion_model.out.2.weight"], state["model.diffusion_model.out.2.weight"])
    assert ckpt.extra["global_step"] == 470000
    line = ckpt.skipped_line()
    assert "\n" not in line and "ModelCheckpoint" in line and "builtins.print" in line
    assert "this must not be printed" not in capsys.readouterr().out


def test_a_pickle_that_would_run_a_command_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    for path in (tmp_path / "evil.ckpt", tmp_path / "evil_legacy.pt"):
        if path.suffix == ".ckpt":
            torch.save({"state_dict": {"w": torch.ones(1)}, "x": _RunsCommand(marker)}, path)
        else:
            path.write_bytes(pickle.dumps({"w": torch.ones(1), "x": _RunsCommand(marker)}))
        with pytest.raises(CheckpointError, match="nothing was run") as info:
            load_checkpoint(path)
        assert "system" in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


def test_truncated_and_missing_files_are_one_line_errors(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"w": torch.randn(64, 64)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or damaged") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.ckpt")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        load_checkpoint(bad)


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads Linux's memory map")
def test_tensors_are_memory_mapped(tmp_path):
    path = tmp_path / "big.ckpt"
    torch.save({"state_dict": {"w": torch.randn(256, 256)}}, path)
    w = load_checkpoint(path).tensors["w"]
    maps = [line.split()[0].split("-") for line in open("/proc/self/maps") if line.rstrip().endswith(str(path))]
    ptr = w.untyped_storage().data_ptr()
    assert any(int(lo, 16) <= ptr < int(hi, 16) for lo, hi in maps)  # the file's pages, not a copy in memory
