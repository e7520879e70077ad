"""The asset cache: ``$LDMKIT_HOME/<name>/`` holding the files and a ``manifest.json`` written last.

A directory counts as fetched only when its manifest exists: fetches build the whole directory in a
staging folder next to it, write the manifest last and rename the folder into place, so an interrupted
fetch leaves nothing that looks complete. ``verify`` re-hashes every file against the manifest.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ldmkit.errors import AssetMissingError, CheckpointError, ConfigError
from ldmkit.io.model_dir import sha256_file

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


def home() -> Path:
    """Root of the asset cache: ``$LDMKIT_HOME``, default ``~/.cache/ldmkit``."""
    value = os.environ.get("LDMKIT_HOME")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "ldmkit"


def checked_home() -> Path:
    """:func:`home`, refused in one line when it names a file instead of a directory."""
    root = home()
    if root.exists() and not root.is_dir():
        raise ConfigError(f"LDMKIT_HOME={root} is a file, not a directory; set LDMKIT_HOME to a directory "
                          "(unset, it is ~/.cache/ldmkit)")
    return root


def writable_home() -> Path:
    """:func:`checked_home`, created if missing, after checking that files can be written in it."""
    root = checked_home()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"cannot write to LDMKIT_HOME={root} ({reason}); set LDMKIT_HOME to a writable "
                          "directory") from None
    return root


def asset_dir(name: str) -> Path:
    """Where asset ``name`` lives (whether or not it has been fetched)."""
    return checked_home() / name


def fetch_command(name: str) -> str:
    return f"ldm assets fetch {name}"


def build_manifest(root: Path, name: str, source: dict[str, Any],
                   progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Hash every file under ``root`` (except the manifest) into a manifest record."""
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST):
        files[path.relative_to(root).as_posix()] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        if progress is not None:
            progress(1)
    return {
        "asset": name,
        "manifest_version": MANIFEST_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "files": files,
    }


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` durably (the last file of a fetch)."""
    target = root / MANIFEST
    with open(target, "w") as handle:
        handle.write(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_manifest(name: str) -> dict[str, Any] | None:
    """The manifest of a fetched asset, or None when it has not been (completely) fetched."""
    path = asset_dir(name) / MANIFEST
    try:
        record = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):  # NotADirectoryError: a file where a folder should be
        return None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is unreadable ({exc}); run: {fetch_command(name)} --force") from None
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
        raise CheckpointError(f"{path} is not an asset manifest; run: {fetch_command(name)} --force")
    return record


def is_fetched(name: str) -> bool:
    try:
        return read_manifest(name) is not None
    except CheckpointError:
        return False


def require(name: str) -> Path:
    """The directory of asset ``name`` if it was fetched completely, else :class:`AssetMissingError`.

    Checks that the manifest exists and that every file it lists is present with its recorded size
    (cheap); ``verify`` does the full SHA-256 check.
    """
    from ldmkit.assets.registry import get_asset

    asset = get_asset(name)
    record = read_manifest(asset.name)
    root = asset_dir(asset.name)
    if record is None:
        raise AssetMissingError(
            f"asset '{asset.name}' ({asset.description}) is not in {home()}; run: {fetch_command(asset.name)}"
        )
    for rel, entry in record["files"].items():
        path = root / rel
        if not path.is_file() or path.stat().st_size != entry.get("bytes"):
            raise AssetMissingError(
                f"asset '{asset.name}' is incomplete ({rel} is missing or changed); "
                f"run: {fetch_command(asset.name)} --force"
            )
    return root


@dataclass
class VerifyResult:
    """Outcome of re-hashing an asset's files."""

    name: str
    files: int = 0
    bytes: int = 0
    bad: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.bad


def verify(name: str, progress: Callable[[int], None] | None = None) -> VerifyResult:
    """Re-hash every file listed in the manifest; ``bad`` lists missing or changed files."""
    from ldmkit.assets.registry import get_asset

    asset = get_asset(name)
    record = read_manifest(asset.name)
    if record is None:
        raise AssetMissingError(f"asset '{asset.name}' is not fetched; run: {fetch_command(asset.name)}")
    root = asset_dir(asset.name)
    result = VerifyResult(asset.name)
    for rel, entry in record["files"].items():
        path = root / rel
        result.files += 1
        if not path.is_file():
            result.bad.append(f"{rel} (missing)")
        elif sha256_file(path) != entry.get("sha256"):
            result.bad.append(f"{rel} (SHA-256 differs)")
        else:
            result.bytes += entry.get("bytes", 0)
        if progress is not None:
            progress(1)
    return result


def install(staging: Path, name: str) -> Path:
    """Move a complete staging directory (manifest included) into place, replacing an older copy."""
    target = asset_dir(name)
    if target.exists():
        old = target.with_name(f".{name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)
    return target


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
