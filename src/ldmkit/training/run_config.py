"""The run's resolved config: written at every start, compared with the last one on resume.

``RUN/config.yaml`` is the config in force now; ``RUN/config-history/step-NNNNNNNN.yaml`` keeps each
config a run was started or resumed with, named by the step it took over at, so a run that changed
settings on the way can still be read back in full.

A resumed run continues the weights, optimiser moments, LR schedule and data position of its checkpoint.
Only settings that decide how the run is carried out (how long, how often it logs or saves, on which
device, with how many workers) may change on resume; a change to anything the checkpoint was computed
under (the model, the data, the loss, the optimiser, the seed, the batch) would give a model that no
config describes, and is refused with the keys named.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch
import yaml

from ldmkit.config import dump_yaml, to_dict
from ldmkit.training.lr_schedules import DECAYING
from ldmkit.training.run_dir import RunDirectoryError

CONFIG_NAME = "config.yaml"
HISTORY_DIR = "config-history"
STARTS_NAME = "starts.jsonl"  # one line per start: when, at which step, on what hardware

# Keys (or key prefixes ending in ".") a resumed run may change.
RESUMABLE_CHANGES = (
    "train.steps", "train.out", "train.progress", "train.log_every", "train.image_every", "train.checkpoint_every",
    "train.keep_last", "train.keep_every", "train.max_minutes", "train.num_workers", "train.device",
    "train.precision", "train.channels_last", "train.compile", "train.compile_mode",
    "train.parallel", "train.max_nonfinite",
    "train.loss_spike_factor",
    "preview.", "scale_samples",
)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; lists stay values."""
    if not isinstance(data, dict):
        return {prefix[:-1]: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(flatten(value, f"{prefix}{key}."))
    return flat


def changed_keys(before: dict[str, Any], after: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted key → (old, new) for every value that differs (a key only on one side counts as missing)."""
    old, new = flatten(before), flatten(after)
    return {k: (old.get(k, "<missing>"), new.get(k, "<missing>"))
            for k in sorted(set(old) | set(new)) if old.get(k, "<missing>") != new.get(k, "<missing>")}


def resumable(key: str) -> bool:
    return any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE_CHANGES)


def describe_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items())


def check_resume_config(run_dir: Path, config: Any, step: int) -> dict[str, tuple[Any, Any]]:
    """Compare ``config`` with the run's last ``config.yaml`` before resuming at ``step``; refuse changes the
    checkpoint cannot continue under. Returns the (allowed) changes."""
    path = run_dir / CONFIG_NAME
    if not path.is_file():  # a run written before configs were kept: nothing to compare with
        return {}
    try:
        before = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RunDirectoryError(f"{path} cannot be read ({exc.__class__.__name__}); restore it or train into a "
                                "new train.out") from None
    after = to_dict(config)
    changes = changed_keys(before if isinstance(before, dict) else {}, after)
    # An option added since the run started, at its default, is how the run was trained (defaults keep the old
    # behaviour): not a change.
    defaults = default_values(type(config)) if dataclasses.is_dataclass(config) else {}
    changes = {k: (old, new) for k, (old, new) in changes.items()
               if not (old == "<missing>" and k in defaults and defaults[k] == new)}
    refused = {k: v for k, v in changes.items() if not resumable(k)}
    same_decay = _decay_end(before) == _decay_end(after)
    if "train.decay_steps" in refused and same_decay:  # written out now, the same schedule as before
        del refused["train.decay_steps"]
    if "train.steps" in changes and not refused and not same_decay:
        raise RunDirectoryError(
            f"train.steps changed ({describe_changes({'train.steps': changes['train.steps']})}) but the "
            f"{after['train']['lr_schedule']} learning-rate decay of the checkpoint at step {step} in {run_dir} ends "
            "at train.steps: set train.decay_steps to the old train.steps to keep its schedule, or train into a new "
            "train.out")
    if refused:
        raise RunDirectoryError(
            f"the checkpoint at step {step} in {run_dir} was trained under another config: {describe_changes(refused)}; "
            "put those values back to resume, or train into a new train.out (a resumed run may change only "
            "how it runs: train.steps, logging, checkpoint and image intervals, device, workers, parallelism)")
    return changes


def default_values(cls: type) -> dict[str, Any]:
    """Dotted key → default (as plain data) of every field of the config class ``cls`` that has one."""
    found: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            found.update(flatten(to_dict(f.default), f"{f.name}."))
        elif f.default_factory is not dataclasses.MISSING:
            found.update(flatten(to_dict(f.default_factory()), f"{f.name}."))
    return found


def _decay_end(config: Any) -> int | None:
    """The update at which the learning-rate decay of ``config`` (plain data) ends; None when it does not decay
    (then ``train.steps`` and ``train.decay_steps`` leave the learning rate alone)."""
    train = config.get("train") if isinstance(config, dict) and isinstance(config.get("train"), dict) else {}
    if train.get("lr_schedule") not in DECAYING:
        return None
    return train.get("decay_steps") or train.get("steps")


def record_config(run_dir: Path, config: Any, step: int) -> Path:
    """Write ``config.yaml`` and its copy in ``config-history/`` for a (re)start at ``step``."""
    dump_yaml(config, run_dir / CONFIG_NAME)
    history = run_dir / HISTORY_DIR
    history.mkdir(exist_ok=True)
    text = (run_dir / CONFIG_NAME).read_text()
    name, n = f"step-{step:08d}", 0
    while (history / f"{name}.yaml").exists():
        if (history / f"{name}.yaml").read_text() == text:  # the same config resumed at the same step again
            return history / f"{name}.yaml"
        n += 1
        name = f"step-{step:08d}-{n}"
    target = history / f"{name}.yaml"
    target.write_text(text)
    return target


def record_start(run_dir: Path, step: int, device: torch.device, world_size: int) -> None:
    """Append this start (time, step, hardware, versions) to ``RUN/starts.jsonl`` for reports."""
    from ldmkit import __version__

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"
    entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "step": step,
             "device": name, "world_size": world_size, "host": platform.node(), "torch": torch.__version__,
             "ldmkit": __version__, "python": platform.python_version()}
    with open(run_dir / STARTS_NAME, "a") as handle:
        handle.write(json.dumps(entry) + "\n")


__all__ = ["RESUMABLE_CHANGES", "record_start", "changed_keys", "check_resume_config", "describe_changes", "record_config"]
