"""``ldm data``: check a folder or shards for bad files, preview a data source as a captioned grid."""

from __future__ import annotations

import argparse
import sys

from ldmkit.cli.common import add_group, add_verb


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    verbs = add_group(subparsers, "data", "inspect data sets: check files, preview samples")

    check = add_verb(verbs, "check", "decode every image of a folder or of tar shards; report sizes, label and "
                     "caption coverage and every bad file (exit 1 when bad files exceed max_bad_fraction)", _check)
    check.add_argument("path", help="an image folder, a .tar shard, a glob of shards or a directory of shards")
    check.add_argument("overrides", nargs="*", metavar="key=value",
                       help="data settings, e.g. label_source=manifest max_bad_fraction=0.05")

    preview = add_verb(verbs, "preview", "write a grid PNG of samples with labels and captions under them", _preview)
    preview.add_argument("source", nargs="+", metavar="PRESET|key=value",
                         help="a preset of configs/data/ (synthetic, synthetic-easy, fashion-mnist-32, ...) or a "
                         "YAML file, then key=value overrides; or only overrides (source=folder path=DIR)")
    preview.add_argument("--out", default="data-preview.png", help="output PNG (default: data-preview.png)")
    preview.add_argument("--split", default="train", choices=("train", "val", "test", "all"))
    preview.add_argument("--count", type=int, default=16, help="number of samples (default 16)")
    preview.add_argument("--columns", type=int, default=4, help="samples per row (default 4)")
    preview.add_argument("--cell", type=int, default=128, help="pixels per sample (default 128)")


def _check(args: argparse.Namespace) -> int:
    from ldmkit.data.check import check_data

    report = check_data(args.path, args.overrides)
    print("\n".join(report.lines()))
    if not report.passed:
        print(f"error: {len(report.bad)} of {report.total} images are bad ({report.bad_fraction:.1%}), more than "
              f"max_bad_fraction={report.max_bad_fraction:g}", file=sys.stderr)
        return 1
    return 0


def _preview(args: argparse.Namespace) -> int:
    from ldmkit.config import load_config
    from ldmkit.data import DataConfig, build_dataset
    from ldmkit.data.preview import check_preview_size, first_samples, save_preview
    from ldmkit.errors import ConfigError

    check_preview_size(args.count, args.columns, args.cell)
    items = list(args.source)
    preset = None if "=" in items[0] else items.pop(0)
    for item in items:
        if "=" not in item:
            raise ConfigError(f"'{item}' is not a key=value override; give the preset first")
    cfg = load_config(DataConfig, preset, items, group="data")
    dataset = build_dataset(cfg, args.split)
    out = save_preview(first_samples(dataset, args.count), args.out, getattr(dataset, "class_names", []),
                       count=args.count, columns=args.columns, cell=args.cell)
    print(f"wrote {out} ({min(args.count, _size(dataset))} samples of {preset or cfg.source}, split {args.split})")
    return 0


def _size(dataset) -> int:
    try:
        return len(dataset)
    except TypeError:
        return 0
