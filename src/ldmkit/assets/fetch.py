"""``fetch``: download, convert, hash and atomically install assets.

Each asset is built in a temporary folder inside ``$LDMKIT_HOME`` (same file system, so the final
rename is atomic), gets its ``manifest.json`` last, and only then is renamed to ``$LDMKIT_HOME/<name>``.
A lock file keeps two processes from fetching the same asset at once.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

from tqdm import tqdm

from ldmkit.assets.clients import AssetFetchError, FetchContext, human_size
from ldmkit.assets.registry import Asset, get_asset
from ldmkit.assets.store import (asset_dir, build_manifest, dir_size, home, install, is_fetched, write_manifest,
                                 writable_home)
from ldmkit.errors import LdmkitError


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock
        yield
        return
    with open(home() / f".{name}.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AssetFetchError(f"another process is fetching '{name}' right now; wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fetch_one(asset: Asset, force: bool, log: Callable[[str], None]) -> Path:
    target = asset_dir(asset.name)
    if not force and is_fetched(asset.name):
        log(f"[{asset.name}] already fetched: {target} (use --force to fetch again)")
        return target
    writable_home()
    started = time.monotonic()
    with _lock(asset.name):
        work = Path(tempfile.mkdtemp(prefix=f".fetch-{asset.name}.", dir=home()))
        try:
            (work / "download").mkdir()
            (work / "out").mkdir()
            ctx = FetchContext(asset.name, work / "download", work / "out", log)
            log(f"[{asset.name}] fetching {asset.description} (~{asset.download_mb:.0f} MB download) into {target}")
            asset.build(ctx)
            files = [p for p in ctx.out.rglob("*") if p.is_file()]
            for path in files:
                path.chmod(0o644)  # some writers create 0600 files; the cache is meant to be shared
            with tqdm(total=len(files), desc=f"[{asset.name}] hashing", unit="file", leave=False,
                      disable=None if len(files) > 100 else True, file=sys.stderr) as bar:
                manifest = build_manifest(ctx.out, asset.name, {
                    "recipe": asset.source,
                    "license": asset.license,
                    "downloads": ctx.sources,
                }, progress=bar.update)
            write_manifest(ctx.out, manifest)
            install(ctx.out, asset.name)
        except LdmkitError:
            raise
        except OSError as exc:
            raise AssetFetchError(f"fetching {asset.name}: {exc}") from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
    downloaded = sum(s["bytes"] for s in ctx.sources)
    log(f"[{asset.name}] done in {time.monotonic() - started:.1f} s: {target} "
        f"({_count(len(manifest['files']), 'file')}, {human_size(dir_size(target))}; downloaded {human_size(downloaded)})")
    return target


def fetch(names: Iterable[str], force: bool = False, log: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Fetch each named asset (skipping those already complete unless ``force``); name → directory.

    Names are checked before anything is downloaded. Progress goes to ``log`` (default: stderr).
    """
    assets = [get_asset(name) for name in dict.fromkeys(names)]
    return {asset.name: _fetch_one(asset, force, log or _stderr) for asset in assets}
