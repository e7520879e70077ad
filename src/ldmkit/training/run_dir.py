"""Checks on a run directory made before any work starts, so a bad path never costs a training run or a
user's file, and the lock that keeps two trainings out of one directory."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
from pathlib import Path

from ldmkit.errors import LdmkitError
from ldmkit.io.model_dir import check_replaceable

LOCK_NAME = ".lock"
# What a training writes into its run directory; anything else there means the directory belongs to someone else.
VALIDATION_LOG = "validation.jsonl"  # one record per validation: step, scores, whether it was the best
BEST_DIR = "best"  # the model directory of the best validation score so far
RUN_ENTRIES = frozenset({"config.yaml", "config-history", "starts.jsonl", "checkpoints", "model", "tb", "images",
                         "class_images",  # DreamBooth: the class images the model made before training
                         "report.html", "report", LOCK_NAME, VALIDATION_LOG, BEST_DIR, "ema-snapshots"})


class RunDirectoryError(LdmkitError):
    """``train.out`` cannot hold this run: a wrong place, someone else's files, or a run in progress."""


def check_run_path(out: str | Path) -> Path:
    """Refuse a ``train.out`` that would spread a run over a directory users keep other things in."""
    if not str(out).strip():
        raise RunDirectoryError("train.out is empty; give the run its own directory, e.g. train.out=runs/my-run")
    path = Path(out).expanduser()
    resolved = path.resolve()
    for what, place in (("the current directory", Path.cwd()), ("your home directory", Path.home()),
                        ("the file-system root", Path(resolved.anchor))):
        if resolved == place.resolve():
            raise RunDirectoryError(f"train.out={out} is {what}; give the run its own directory, "
                                    "e.g. train.out=runs/my-run")
    return path


def check_run_contents(directory: Path) -> None:
    """Refuse a directory holding entries a training never writes: the run would mix with them, and replacing
    ``model/`` could delete them."""
    if not directory.is_dir():
        return
    foreign = sorted(p.name for p in directory.iterdir()
                     if p.name not in RUN_ENTRIES and not p.name.startswith(".write-test-"))
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise RunDirectoryError(f"train.out {directory} holds files that no ldmkit run wrote ({shown}); "
                                "choose a new or empty directory")
    if (directory / "model").exists():  # replaced at the end of the run: say so now, not after training
        check_replaceable(directory / "model")


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


class RunLock:
    """An exclusive ``flock`` on ``RUN/.lock`` for the life of a training.

    The kernel drops the lock when the process ends however it ends (SIGKILL included), so a crash leaves
    no stale lock; the file keeps the holder's PID only to name it in the error of a second run.
    """

    def __init__(self, directory: Path):
        self.path = Path(directory) / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise RunDirectoryError(
                    f"{self.path.parent} is in use by another training (PID {holder}); wait for it to end, "
                    "stop it, or choose another train.out") from None
            raise RunDirectoryError(f"cannot lock {self.path} ({exc.strerror}); put train.out on a local "
                                    "file system or choose another one") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock; the file stays, empty locks are harmless
            self._fd = None


def directory_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


__all__ = ["RunDirectoryError", "RunLock", "check_run_contents", "check_run_path", "check_writable",
           "directory_size"]
