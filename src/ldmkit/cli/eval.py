"""``ldm eval stats | images``: reference statistics of real data, and scores of a folder of images.

``ldm eval stats --data PRESET|YAML|FOLDER [key=value ...] --out stats.npz`` computes the feature statistics
of real images once; ``ldm eval images DIR --reference stats.npz`` scores any folder of images against them
and writes JSON (metrics, settings, seconds, images per second). Under ``torchrun`` the images are shared
among the processes and the features gathered; rank 0 prints and writes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ldmkit.cli.common import add_group, add_verb

METRIC_CHOICES = ("fd", "kd", "pr", "is")  # accuracy needs labels: see evaluate_images


def _metrics(text: str) -> tuple[str, ...]:
    names = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in names if m not in METRIC_CHOICES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown metric(s) {', '.join(bad) or '(none)'}; "
                                         f"choose from {', '.join(METRIC_CHOICES)}")
    return names


def _stats(args: argparse.Namespace) -> int:
    from ldmkit import runtime
    from ldmkit.evaluation.distributed import init_distributed_if_launched
    from ldmkit.evaluation.evaluate import compute_reference_stats
    from ldmkit.evaluation.sources import reference_source

    init_distributed_if_launched()
    batches, source = reference_source(args.data, args.overrides, split=args.split, batch_size=args.batch_size,
                                       limit=args.limit, num_workers=args.num_workers)
    stats = compute_reference_stats(batches, args.feature, source=source, keep_features=not args.no_features,
                                    batch_size=args.batch_size, device=runtime.pick_device(args.device),
                                    feature_weights=args.feature_weights, progress=not args.quiet)
    if runtime.is_main_process():
        stats.save(args.out)
        size = "x".join(map(str, stats.image_size)) if stats.image_size else "mixed sizes"
        print(f"{args.out}: {stats.count} images ({size}), feature {stats.feature} ({stats.dim}-d), "
              f"fingerprint {stats.fingerprint[:16]}")
    return 0


def _images(args: argparse.Namespace) -> int:
    from ldmkit import runtime
    from ldmkit.evaluation.distributed import init_distributed_if_launched
    from ldmkit.evaluation.evaluate import evaluate_images
    from ldmkit.evaluation.images import folder_batches
    from ldmkit.evaluation.stats import load_stats

    init_distributed_if_launched()
    reference = load_stats(args.reference) if args.reference else None
    feature = args.feature or (reference.feature if reference is not None else "efflite0")
    metrics = args.metrics or (("fd", "kd", "pr") if reference is not None else ())
    if not metrics:
        from ldmkit.errors import ConfigError

        raise ConfigError("nothing to compute: pass --reference stats.npz (or --metrics is with --feature inception)")
    batches = folder_batches(args.folder, batch_size=args.batch_size, limit=args.limit,
                             num_workers=args.num_workers)
    result = evaluate_images(
        batches, reference, feature=feature, metrics=metrics, feature_weights=args.feature_weights,
        device=runtime.pick_device(args.device), batch_size=args.batch_size, kid_subsets=args.kid_subsets,
        kid_subset_size=args.kid_subset_size, pr_k=args.pr_k, seed=args.seed,
        allow_size_mismatch=args.allow_size_mismatch, progress=not args.quiet,
    )
    result["settings"]["images"] = str(Path(args.folder).resolve())
    if args.reference:
        result["settings"]["reference"]["path"] = str(Path(args.reference).resolve())
    if runtime.is_main_process():
        text = json.dumps(result, indent=2)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(text + "\n")
        for name, value in result["metrics"].items():
            print(f"{name}: {value:.6g}", file=sys.stderr if not args.out else sys.stdout)
        if not args.out:
            print(text)
        else:
            print(f"{result['num_images']} images, {result['images_per_second']} img/s -> {args.out}")
    return 0


def _common(parser: argparse.ArgumentParser, feature_default: str | None) -> None:
    parser.add_argument("--feature", default=feature_default,
                        help="feature network: efflite0 (FD-EffLite0, KD-EffLite0, P&R), inception (standard FID; "
                             "needs the user's pt_inception-2015-12-05-6726825d.pth, via --feature-weights, "
                             "$LDMKIT_INCEPTION_WEIGHTS or the torch hub cache), or random-conv (tests only)"
                             + ("" if feature_default else "; default: the reference's"))
    parser.add_argument("--feature-weights", default=None, metavar="PATH",
                        help="weights file of the feature network (default: the fetched asset, or for inception "
                             "the torch hub cache)")
    parser.add_argument("--batch-size", type=int, default=50, help="images per forward pass (default 50)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images")
    parser.add_argument("--num-workers", type=int, default=0, help="image-loading worker processes")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    verbs = add_group(subparsers, "eval", "evaluate images: reference statistics, FD / KD / precision-recall")

    parser = add_verb(verbs, "stats", "compute reference feature statistics of real images (once, reused)", _stats)
    parser.add_argument("--data", required=True,
                        help="a folder of images, or a data preset name from configs/data/ or a YAML file")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="overrides of the data config")
    parser.add_argument("--split", default="train", help="data set split (default train)")
    parser.add_argument("--out", required=True, help="output .npz file")
    parser.add_argument("--no-features", action="store_true",
                        help="store only mean and covariance (smaller; KID and precision/recall then unavailable)")
    _common(parser, "efflite0")

    parser = add_verb(verbs, "images", "score a folder of images against reference statistics; writes JSON", _images)
    parser.add_argument("folder", help="folder of images (searched recursively)")
    parser.add_argument("--reference", default=None, help="reference statistics from `ldm eval stats`")
    parser.add_argument("--metrics", type=_metrics, default=None,
                        help=f"comma-separated subset of {','.join(METRIC_CHOICES)} (default fd,kd,pr)")
    parser.add_argument("--out", default=None, help="write the JSON result here (default: print it)")
    parser.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (default 100)")
    parser.add_argument("--kid-subset-size", type=int, default=1000, help="KID subset size (default 1000)")
    parser.add_argument("--pr-k", type=int, default=3, help="neighbours for precision/recall (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the KID subsets")
    parser.add_argument("--allow-size-mismatch", action="store_true",
                        help="score images of another size than the reference's")
    _common(parser, None)
