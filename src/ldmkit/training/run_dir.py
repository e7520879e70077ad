"""Checks on a run directory made before any work starts, so a bad path never costs a training run."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ldmkit.errors import LdmkitError


def check_writable(directory: Path, needed_bytes: int = 0) -> None:
    """Create ``directory`` if needed and prove a file can be written there; check free space."""
    if directory.exists() and not directory.is_dir():
        raise LdmkitError(f"output path {directory} exists and is not a directory; choose another train.out")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LdmkitError(f"cannot create output directory {directory}: {exc.strerror}; choose another train.out")
    if not directory.is_dir():
        raise LdmkitError(f"output path {directory} exists and is not a directory; choose another train.out")
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise LdmkitError(f"output directory {directory} is not writable ({exc.strerror}); choose another train.out")
    if needed_bytes:
        free = shutil.disk_usage(directory).free
        if free < needed_bytes:
            raise LdmkitError(
                f"only {free / 2**20:.0f} MiB free in {directory}, a checkpoint needs about "
                f"{needed_bytes / 2**20:.0f} MiB; free some space or choose another train.out"
            )


def directory_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


__all__ = ["check_writable", "directory_size"]
