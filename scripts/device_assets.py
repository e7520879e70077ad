"""Move fetched assets to a machine without network, within a size limit, and install them there.

``pack NAME… --to DIR`` (here) copies each asset from ``$LDMKIT_HOME``; safetensors weights are stored
as float16 to halve their size (the networks run under bf16 autocast on the GPU anyway).
``unpack DIR`` (there) installs each folder of DIR into ``$LDMKIT_HOME`` with float32 weights and a
fresh manifest, so ``ldmkit.assets.require`` accepts it.

    python scripts/device_assets.py pack lpips fashion-mnist --to .carry
    python scripts/device_assets.py unpack .carry          # on the GPU machine
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ldmkit.assets import asset_dir, require
from ldmkit.assets.store import MANIFEST, build_manifest, write_manifest


def _copy(source: Path, target: Path, dtype: torch.dtype) -> None:
    for path in sorted(source.rglob("*")):
        if not path.is_file() or path.name == MANIFEST:
            continue
        out = target / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".safetensors":
            tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in load_file(path).items()}
            save_file(tensors, out)
        else:
            shutil.copy2(path, out)


def pack(names: list[str], to: Path, skip: list[str]) -> None:
    for name in names:
        source = require(name)
        target = to / name
        shutil.rmtree(target, ignore_errors=True)
        _copy(source, target, torch.float16)
        for pattern in skip:
            for path in target.glob(pattern):
                path.unlink()
        size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
        print(f"{name}: {size / 2**20:.1f} MiB in {target}")


def unpack(folder: Path) -> None:
    for source in sorted(p for p in folder.iterdir() if p.is_dir()):
        target = asset_dir(source.name)
        shutil.rmtree(target, ignore_errors=True)
        _copy(source, target, torch.float32)
        write_manifest(target, build_manifest(target, source.name, {"carried": str(source)}))
        print(f"installed {source.name} in {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("pack")
    p.add_argument("names", nargs="+")
    p.add_argument("--to", type=Path, default=Path(".carry"))
    p.add_argument("--skip", nargs="*", default=[], help="glob patterns of files to leave out")
    u = sub.add_parser("unpack")
    u.add_argument("folder", type=Path)
    args = parser.parse_args()
    if args.verb == "pack":
        pack(args.names, args.to, args.skip)
    else:
        unpack(args.folder)


if __name__ == "__main__":
    main()
