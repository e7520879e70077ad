"""The model directory: ``config.json`` + one ``<name>.safetensors`` per component.

``config.json`` holds ``format`` ("ldmkit"), ``format_version``, ``kind`` (what class to build),
``config`` (the component's config as plain data), ``files`` (name → SHA-256 of each safetensors file)
and free-form ``extra`` data (latent scale, schedule, references to other model directories).

Directories are written next to their destination and renamed into place, so a crash never leaves
a half-written model where a complete one was. Weights are never unpickled: safetensors only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ldmkit.errors import CheckpointError

FORMAT = "ldmkit"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
#: Sides of the ``latent_size`` an LDM's config.json may give (2048 latent cells = 16384 px at f = 8); a larger
#: one comes from a damaged or hand-edited file and would make the default sample size impossible to allocate.
MAX_LATENT_SIDE = 2048


@dataclass
class ModelDirInfo:
    """What ``config.json`` of a model directory says."""

    path: Path
    kind: str
    config: dict[str, Any]
    files: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _plain_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors; tensors sharing storage are copied (safetensors refuses aliasing)."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for key, value in state.items():
        tensor = value.detach().to("cpu").contiguous()
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if ident in seen:
            tensor = tensor.clone()
        seen.add(ident)
        out[key] = tensor
    return out


def storage_failure(exc: BaseException) -> str | None:
    """The reason, in words, when ``exc`` is a failure to write files (full disk, quota, read-only or vanished
    directory) as torch, safetensors or the OS report it; None for any other error."""
    if isinstance(exc, CheckpointError) and exc.__cause__ is not None:  # already reported by save_model_dir
        return storage_failure(exc.__cause__)
    text = str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or text
    storage_words = ("PytorchStreamWriter", "file write failed", "inline_container", "os error", "IoError")
    if isinstance(exc, (RuntimeError, SafetensorError)) and any(w in text for w in storage_words):
        if "No space left" in text or "os error 28" in text or "StorageFull" in text:
            return "no space left on device"
        if "Read-only" in text or "os error 30" in text:
            return "read-only file system"
        return "a file could not be written"
    return None


def fsync_path(path: Path) -> None:
    """Flush a file or a directory entry to disk; file systems that cannot are skipped silently."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` (deepest first), then ``root`` itself."""
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        fsync_path(path)
    fsync_path(root)


def save_model_dir(
    path: str | Path,
    *,
    kind: str,
    config: Mapping[str, Any],
    weights: Mapping[str, torch.nn.Module | Mapping[str, torch.Tensor]],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a model directory atomically. ``weights`` maps a component name to a module or state dict."""
    path = Path(path)
    if path.exists():
        check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        files = {}
        for name, item in weights.items():
            state = item.state_dict() if isinstance(item, torch.nn.Module) else item
            target = staging / f"{name}.safetensors"
            save_file(_plain_tensors(state), str(target), metadata={"format": FORMAT})
            files[name] = sha256_file(target)
        record = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "config": dict(config),
            "files": files,
            "extra": dict(extra or {}),
        }
        (staging / CONFIG_NAME).write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
        for child in staging.iterdir():
            with open(child, "rb") as handle:
                os.fsync(handle.fileno())
        fsync_path(staging)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)
        fsync_path(path.parent)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        reason = storage_failure(exc)
        if reason is not None:
            raise CheckpointError(f"could not write model directory {path} ({reason}); free space or choose "
                                  "another place, then run the command again") from exc
        raise
    return path


ADAPTERS_DIR = "adapters"  # a model directory's adapters: <model>/adapters/NAME.safetensors (+ the kohya twin)
ADAPTER_METADATA = "ldmkit_lora"  # the safetensors metadata key ldmkit writes into every adapter file


def _written_adapters(path: Path) -> bool:
    """Whether ``path`` is an ``adapters/`` folder holding only adapter files ldmkit wrote (a LoRA run's output,
    which the next save of that run replaces)."""
    from safetensors import SafetensorError, safe_open

    children = sorted(path.iterdir())
    for child in children:
        if child.suffix != ".safetensors" or not child.is_file() or child.is_symlink():
            return False
        try:
            with safe_open(str(child), "pt") as f:
                if ADAPTER_METADATA not in (f.metadata() or {}):
                    return False
        except (OSError, SafetensorError):
            return False
    return bool(children)


def foreign_entries(path: Path) -> list[str]:
    """Entries of an existing directory that are not part of an ldmkit model directory (all of them when it
    has no readable ldmkit ``config.json``); a nested ``autoencoder/`` copy is checked the same way, and an
    ``adapters/`` folder belongs when ldmkit wrote every file in it."""
    try:
        record = json.loads((path / CONFIG_NAME).read_text())
        named = {CONFIG_NAME, *(f"{name}.safetensors" for name in record["files"])} if record["format"] == FORMAT \
            else set()
    except (OSError, ValueError, KeyError, TypeError):
        named = set()
    foreign = []
    for child in sorted(path.iterdir()) if path.is_dir() else []:
        if child.name in named and child.is_file() and not child.is_symlink():
            continue
        if named and child.name == "autoencoder" and child.is_dir() and not child.is_symlink() \
                and not foreign_entries(child):
            continue
        if named and child.name == ADAPTERS_DIR and child.is_dir() and not child.is_symlink() \
                and _written_adapters(child):
            continue
        foreign.append(child.name)
    return foreign


def check_replaceable(path: Path) -> None:
    """Refuse to replace ``path`` unless it is an ldmkit model directory holding nothing else: replacing a
    directory deletes it, and a file ldmkit did not write must never go with it."""
    if not path.is_dir() or path.is_symlink():
        raise CheckpointError(f"{path} exists and is not a model directory; move it away or choose another output")
    foreign = foreign_entries(path)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise CheckpointError(f"{path} holds files that are not part of an ldmkit model ({shown}); it would be "
                              "replaced: move them away or choose another output")


def read_model_dir(path: str | Path, kind: str | tuple[str, ...] | None = None) -> ModelDirInfo:
    """Read and check ``config.json``; ``kind`` restricts which kinds of model are accepted."""
    path = Path(path)
    config_path = path / CONFIG_NAME
    if path.is_file():
        hint = f"give its folder {path.parent}" if path.name == CONFIG_NAME else "give the folder that holds config.json"
        raise CheckpointError(f"{path} is a file, not a model directory; {hint}")
    if not path.is_dir():
        raise CheckpointError(f"model directory {path} does not exist")
    if not config_path.is_file():
        raise CheckpointError(f"{path} is not a model directory: it has no {CONFIG_NAME}")
    try:
        record = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_path} is not valid JSON ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{config_path} is not an ldmkit model config (no \"format\": \"{FORMAT}\")")
    version = record.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{config_path} has format_version {version!r}; this ldmkit reads up to {FORMAT_VERSION}: upgrade ldmkit"
        )
    found = record.get("kind")
    allowed = (kind,) if isinstance(kind, str) else kind
    if allowed is not None and found not in allowed:
        raise CheckpointError(f"{path} holds a '{found}' model, expected {' or '.join(repr(k) for k in allowed)}")
    extra = record.get("extra", {})
    if isinstance(extra, dict) and "latent_size" in extra:
        _check_latent_size(extra["latent_size"], config_path)
    return ModelDirInfo(
        path=path,
        kind=found,
        config=record.get("config", {}),
        files=record.get("files", {}),
        extra=extra,
        format_version=version,
    )


def _check_latent_size(size: Any, config_path: Path) -> None:
    """``latent_size`` must be [height, width] in whole latent cells, each in 1..MAX_LATENT_SIDE."""

    def whole_side(side: Any) -> bool:
        number = isinstance(side, (int, float)) and not isinstance(side, bool)
        return number and 1 <= side <= MAX_LATENT_SIDE and float(side).is_integer()

    if not (isinstance(size, list) and len(size) == 2 and all(whole_side(side) for side in size)):
        raise CheckpointError(f"{config_path} gives latent_size {size!r}; it must be [height, width] in latent cells, "
                              f"each 1..{MAX_LATENT_SIDE}: the file is damaged or was edited, restore it")


def load_weights(info: ModelDirInfo, name: str = "model", verify: bool = True) -> dict[str, torch.Tensor]:
    """Load one component's tensors, checking the SHA-256 recorded in ``config.json``."""
    target = info.path / f"{name}.safetensors"
    if not target.is_file():
        have = ", ".join(sorted(info.files)) or "none"
        raise CheckpointError(f"{target} is missing (components in {info.path}: {have})")
    expected = info.files.get(name)
    if verify and expected is not None and sha256_file(target) != expected:
        raise CheckpointError(f"{target} does not match the SHA-256 in {CONFIG_NAME}: the file is damaged or was changed")
    try:
        return load_file(str(target))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{target} cannot be read as safetensors ({exc})") from None


def load_state_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module``, failing with a precise list of missing / unexpected / mis-shaped keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshaped = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))

    def _few(keys: list[str]) -> str:
        return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")

    problems = []
    if missing:
        problems.append(f"missing {len(missing)} ({_few(missing)})")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} ({_few(unexpected)})")
    if misshaped:
        detail = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in misshaped]
        problems.append(f"mis-shaped {len(misshaped)} ({_few(detail)})")
    if problems:
        raise CheckpointError(f"weights in {source} do not fit the model: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)
