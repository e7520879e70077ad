"""Atomic training checkpoints that never damage the previous one.

A checkpoint is a directory ``checkpoints/step-00001000/`` holding

- ``weights/``: inference weights in the model-directory format (safetensors + config.json),
- ``state.pt``: training state (optimisers, schedulers, EMA counters, data position, RNG) read back with
  ``torch.load(weights_only=True)``, never unpickling code,
- ``MANIFEST.json``: step and the SHA-256 of every file, written last.

It is written into a temporary directory, fsynced and renamed into place; only directories with a
valid manifest are candidates for resume. Old checkpoints are deleted only after a new one is complete.
Weights that are not finite are never written: a NaN checkpoint would look complete and every later run
would resume from it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from ldmkit.errors import CheckpointError
from ldmkit.io.model_dir import fsync_path, fsync_tree, sha256_file, storage_failure

MANIFEST = "MANIFEST.json"
STATE = "state.pt"
_NAME = re.compile(r"^step-(\d{8,})$")


class CheckpointManager:
    """Writes, lists, loads and prunes the checkpoints of one run."""

    def __init__(self, directory: str | Path, keep_last: int = 2, keep_every: int = 0):
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.keep_every = keep_every

    def save(self, step: int, state: dict[str, Any], write_weights: Callable[[Path], None]) -> Path:
        """Write checkpoint ``step`` atomically; ``write_weights(dir)`` writes the inference model directory."""
        final = self.directory / f"step-{step:08d}"
        bad = nonfinite_tensors(state.get("modules", {}))
        if bad:
            shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise CheckpointError(f"the weights are not finite at step {step} (NaN/inf in {shown}); checkpoint "
                                  "not written, earlier checkpoints are intact: lower train.lr or check the data, "
                                  "then rerun the same command to resume")
        staging: Path | None = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".step-{step:08d}.", dir=self.directory))
            write_weights(staging / "weights")
            torch.save(state, staging / STATE)
            files = {
                str(p.relative_to(staging)): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()
            }
            fsync_tree(staging)
            manifest = {"step": step, "files": files}
            tmp_manifest = staging / (MANIFEST + ".tmp")
            with open(tmp_manifest, "w") as handle:
                json.dump(manifest, handle, indent=1)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_manifest, staging / MANIFEST)
            if final.exists():  # an older save of the same step: move it aside (atomically) before replacing it
                self._discard(final)
            os.replace(staging, final)
            fsync_path(self.directory)
        except BaseException as exc:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            reason = storage_failure(exc)
            if reason is not None:
                raise CheckpointError(
                    f"could not write checkpoint {final} ({reason}); earlier checkpoints are intact: free space "
                    "or fix the run directory, then rerun the same command to resume"
                ) from exc
            raise
        self.prune()
        return final

    def complete(self) -> list[tuple[int, Path]]:
        """(step, path) of every checkpoint with a manifest, oldest first (files are not re-hashed here)."""
        found = []
        if not self.directory.is_dir():
            return found
        for child in self.directory.iterdir():
            match = _NAME.match(child.name)
            if match and (child / MANIFEST).is_file():
                found.append((int(match.group(1)), child))
        return sorted(found)

    def latest(self) -> Path | None:
        items = self.complete()
        return items[-1][1] if items else None

    def verify(self, path: Path) -> dict[str, Any]:
        """Check every file of a checkpoint against its manifest; returns the manifest."""
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path / MANIFEST} cannot be read ({exc})") from None
        for name, digest in manifest.get("files", {}).items():
            target = path / name
            if not target.is_file():
                raise CheckpointError(f"checkpoint file {target} is missing; delete {path} to resume from an "
                                      "earlier checkpoint")
            if sha256_file(target) != digest:
                raise CheckpointError(f"checkpoint file {target} does not match its SHA-256 (damaged or changed); "
                                      f"delete {path} to resume from an earlier checkpoint")
        return manifest

    def load_state(self, path: Path) -> dict[str, Any]:
        """Verify and load ``state.pt`` without unpickling code (``weights_only=True``)."""
        self.verify(path)
        try:
            return torch.load(path / STATE, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 — any unpickling refusal or corruption is reported
            raise CheckpointError(f"{path / STATE} {_refusal(exc)}; delete {path} to resume from an earlier "
                                  "checkpoint") from None

    def prune(self) -> None:
        """Delete complete checkpoints beyond ``keep_last`` (except multiples of ``keep_every``) and stale temp dirs."""
        items = self.complete()
        keep = {step for step, _ in items[-self.keep_last:]}
        if self.keep_every:
            keep |= {step for step, _ in items if step % self.keep_every == 0}
        for step, path in items:
            if step not in keep:
                self._discard(path)
        for child in self.directory.iterdir():
            if child.name.startswith(".step-") and child.is_dir():
                shutil.rmtree(child, ignore_errors=True)

    def _discard(self, path: Path) -> None:
        """Rename a checkpoint to a hidden temp name, then delete it: a crash mid-delete never leaves a
        half-deleted ``step-*`` directory that still looks complete (its manifest not yet removed)."""
        trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=self.directory))
        os.replace(path, trash / path.name)
        fsync_path(self.directory)
        shutil.rmtree(trash, ignore_errors=True)


def nonfinite_tensors(tree: Any, prefix: str = "") -> list[str]:
    """Dotted names of the floating-point tensors in a nested state that hold a NaN or an infinity."""
    return [name for name, tensor in _tensors(tree, prefix)
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]


def _tensors(tree: Any, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(tree, torch.Tensor):
        yield prefix.rstrip("."), tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from _tensors(value, f"{prefix}{key}.")


_FOREIGN_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _refusal(exc: Exception) -> str:
    """Why a ``state.pt`` was refused, in words that never suggest unpickling it with code execution."""
    text = str(exc)
    if "Weights only load failed" in text or "Unsupported" in text:
        found = _FOREIGN_GLOBAL.search(text)
        what = f" (it refers to {found.group(1)})" if found else ""
        return (f"is not a checkpoint this program wrote: it holds pickled objects ldmkit never saves{what}, "
                "and none of it was run")
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"is damaged and cannot be read ({first})"
