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

from ldmkit.cli.common import add_group, add_verb, check_counts, configure_pipeline, sampling_options

METRIC_CHOICES = ("fd", "kd", "pr", "is")  # a folder's images have no intended class for accuracy
GENERATION_METRICS = (*METRIC_CHOICES, "accuracy")  # samples of a class model do


def _metric_list(choices: tuple[str, ...]):
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(m.strip() for m in text.split(",") if m.strip())
        bad = [m for m in names if m not in choices]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"unknown metric(s) {', '.join(bad) or '(none)'}; "
                                             f"choose from {', '.join(choices)}")
        return names
    return parse


_metrics = _metric_list(METRIC_CHOICES)


def _check_loading_counts(args: argparse.Namespace) -> None:
    """The image-loading options every scoring command shares."""
    check_counts(args, "batch_size", "limit")
    check_counts(args, "num_workers", minimum=0)


def _stats(args: argparse.Namespace) -> int:
    from ldmkit import runtime
    from ldmkit.evaluation.distributed import init_distributed_if_launched
    from ldmkit.evaluation.evaluate import compute_reference_stats
    from ldmkit.evaluation.sources import reference_source

    _check_loading_counts(args)
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

    _check_loading_counts(args)
    check_counts(args, "kid_subsets", "kid_subset_size", "pr_k")
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
    _report(result, args.out, f"{result['num_images']} images, {result['images_per_second']} img/s")
    return 0


def _reconstruction(args: argparse.Namespace) -> int:
    """``ldm eval reconstruction``: PSNR, SSIM, LPIPS, rFD and VQ code usage of a first stage, and of bicubic."""
    from ldmkit import runtime
    from ldmkit.autoencoders import load_autoencoder
    from ldmkit.errors import AssetMissingError
    from ldmkit.evaluation.reconstruction_eval import evaluate_reconstruction, write_reconstruction_report
    from ldmkit.evaluation.sources import dataset_batches, reference_source

    _check_loading_counts(args)
    check_counts(args, "examples", minimum=0)
    device = runtime.pick_device(args.device)
    autoencoder = load_autoencoder(args.autoencoder, device=device)
    if Path(args.data).is_dir():
        batches, origin = reference_source(args.data, args.overrides, split=args.split, batch_size=args.batch_size,
                                           limit=args.limit, num_workers=args.num_workers)
        source = origin.text
        total = args.limit
    else:
        from ldmkit.config import load_config, to_dict
        from ldmkit.data import DataConfig, build_dataset

        config = load_config(DataConfig, args.data, args.overrides, group="data")
        dataset = build_dataset(config, args.split)
        total = len(dataset) if args.limit is None else min(args.limit, len(dataset))
        batches = dataset_batches(dataset, batch_size=args.batch_size, limit=args.limit, num_workers=args.num_workers)
        source = {"data": to_dict(config), "split": args.split}
    lpips = None
    if not args.no_lpips:
        from ldmkit.autoencoders.lpips import LPIPS

        lpips = LPIPS.from_assets(args.lpips_net)  # AssetMissingError names `ldm assets fetch lpips`
    features, fd_note = None, None
    if args.feature != "none":
        from ldmkit.evaluation.extractor import build_feature_extractor

        try:
            features = build_feature_extractor(args.feature, device=device, weights=args.feature_weights)
        except AssetMissingError as exc:
            if args.require_fd:
                raise
            fd_note = f"Fréchet distance left out: {exc}"
    result = evaluate_reconstruction(autoencoder, batches, lpips=lpips, features=features, device=device,
                                     quantize=not args.float_metrics, bicubic=not args.no_bicubic,
                                     examples=args.examples, total=total, progress=not args.quiet)
    if fd_note:
        result["notes"] = [n for n in result["notes"] if not n.startswith("Fréchet")] + [fd_note]
    extra = {"autoencoder": str(Path(args.autoencoder).resolve()), "source": source, "limit": args.limit}
    json_path, png_path = write_reconstruction_report(result, args.out, extra=extra)
    for method, values in result["metrics"].items():
        print(f"{method:12s} " + "  ".join(f"{name} {value:.4g}" for name, value in values.items()))
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"{result['num_images']} images, {result['images_per_second']} img/s -> {json_path}"
          + (f", {png_path}" if png_path else ""))
    return 0


def _add_reconstruction(verbs: argparse._SubParsersAction) -> None:
    parser = add_verb(verbs, "reconstruction",
                      "score a first stage's reconstructions (PSNR, SSIM, LPIPS, rFD, VQ code usage) next to a "
                      "bicubic resampling that keeps as many values as the latent", _reconstruction)
    parser.add_argument("--autoencoder", required=True, help="model directory of the autoencoder (ldm train autoencoder)")
    parser.add_argument("--data", required=True, help="a data preset name from configs/data/, a YAML file or a folder")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="overrides of the data config")
    parser.add_argument("--split", default="test", help="data set split (default test)")
    parser.add_argument("--out", required=True, help="output folder for reconstruction.json and reconstruction.png")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images")
    parser.add_argument("--num-workers", type=int, default=0, help="image-loading worker processes")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--examples", type=int, default=8, help="images in the side-by-side picture (default 8)")
    parser.add_argument("--no-lpips", action="store_true", help="leave LPIPS out (no lpips asset needed)")
    parser.add_argument("--lpips-net", default="vgg16", choices=("vgg16", "alex"), help="LPIPS backbone (default vgg16)")
    parser.add_argument("--feature", default="efflite0",
                        help="feature network of the Fréchet distance: efflite0 (rFD-EffLite0, default), inception "
                             "(rFID; needs the user's weights), random-conv (tests only) or none")
    parser.add_argument("--feature-weights", default=None, metavar="PATH", help="weights file of the feature network")
    parser.add_argument("--require-fd", action="store_true",
                        help="fail when the feature network's weights are missing (default: leave rFD out, with a note)")
    parser.add_argument("--no-bicubic", action="store_true", help="leave the bicubic baseline out")
    parser.add_argument("--float-metrics", action="store_true",
                        help="PSNR/SSIM on float values instead of 8-bit levels")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


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


def _generation(args: argparse.Namespace) -> int:
    """``ldm eval generation``: sample --n images from a model and score them against reference statistics."""
    from ldmkit.errors import ConfigError
    from ldmkit.evaluation.distributed import init_distributed_if_launched
    from ldmkit.evaluation.generation import captions_from_data, data_of_reference, evaluate_generation
    from ldmkit.evaluation.stats import load_stats
    from ldmkit.pipelines import load_pipeline

    check_counts(args, "n", "batch_size", "eval_batch_size", "kid_subsets", "kid_subset_size", "pr_k")
    if sum(map(bool, (args.prompt, args.class_label, args.prompts_from_data))) > 1:
        raise ConfigError("give one of --prompt, --class and --prompts-from-data")
    if (args.data or args.overrides) and not args.prompts_from_data:
        raise ConfigError("--data and key=value overrides choose the captions of --prompts-from-data; add it")
    init_distributed_if_launched()
    reference = load_stats(args.reference)
    prompts, prompt_source = args.prompt, None
    if args.prompts_from_data:
        if args.data:
            data, split = args.data, args.split or "train"
        else:
            data, split = data_of_reference(reference)
            split = args.split or split
        prompts = captions_from_data(data, args.overrides, split=split, n=args.n, seed=args.seed)
        prompt_source = {"data": data, "overrides": list(args.overrides), "split": split}
    pipe = configure_pipeline(load_pipeline(args.model, device=args.device, precision=args.precision), args)
    result = evaluate_generation(
        pipe, reference, n=args.n, prompts=prompts, class_labels=args.class_label, **sampling_options(args),
        negative_prompt=args.negative_prompt, seed=args.seed, height=args.height,
        width=args.width, batch_size=args.batch_size, feature=args.feature, feature_weights=args.feature_weights,
        metrics=args.metrics or ("fd", "kd", "pr"), classifier=args.classifier, eval_batch_size=args.eval_batch_size,
        kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size, pr_k=args.pr_k,
        allow_size_mismatch=args.allow_size_mismatch, progress=not args.quiet,
    )
    result["settings"]["generation"]["model"] = str(Path(args.model).resolve())
    result["settings"]["reference"]["path"] = str(Path(args.reference).resolve())
    if prompt_source is not None:
        result["settings"]["generation"]["prompts_from"] = prompt_source
    _report(result, args.out, f"{result['num_images']} images: sampling {result['sampling_seconds']} s "
                              f"({result['sampling_images_per_second']} img/s), total {result['seconds']} s")
    return 0


def _report(result: dict, out: str | None, summary: str) -> None:
    """On rank 0: the JSON to ``out`` (or stdout), metrics and ``summary`` as readable lines.

    Without ``out`` the readable lines go to stderr so that stdout holds only the JSON.
    """
    from ldmkit.runtime import is_main_process

    if not is_main_process():
        return
    text = json.dumps(result, indent=2)
    stream = sys.stdout if out else sys.stderr
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    for name, value in result["metrics"].items():
        print(f"{name}: {value:.6g}", file=stream)
    print(summary + (f" -> {out}" if out else ""), file=stream)
    if not out:
        print(text)


def _add_generation(verbs: argparse._SubParsersAction) -> None:
    from ldmkit.cli.common import add_sampling_arguments

    parser = add_verb(verbs, "generation", "sample images from a model and score them against reference "
                      "statistics (FD / KD / P&R with the reference's feature network); writes JSON", _generation)
    parser.add_argument("--model", required=True, help="model directory written by `ldm train diffusion`")
    parser.add_argument("--reference", required=True, help="reference statistics from `ldm eval stats`")
    parser.add_argument("--n", type=int, required=True, help="number of images to sample (all ranks together)")
    parser.add_argument("--prompt", nargs="+", default=None, help="caption(s) of a text model, cycled over --n")
    parser.add_argument("--prompts-from-data", action="store_true",
                        help="text models: captions drawn at random from --data (default: the reference's data set)")
    parser.add_argument("--data", default=None, help="data preset or YAML file of --prompts-from-data")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="overrides of the --data config")
    parser.add_argument("--split", default=None, help="split of the captions' data set (default: the reference's)")
    parser.add_argument("--class", dest="class_label", nargs="+", type=int, default=None,
                        help="class label(s) of a class model, cycled (default: all classes, cycled uniformly)")
    parser.add_argument("--negative-prompt", default=None, help="steer away from this caption (text models)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per sampling batch (default 16)")
    parser.add_argument("--eval-batch-size", type=int, default=50, help="images per feature-network pass")
    parser.add_argument("--metrics", type=_metric_list(GENERATION_METRICS), default=None,
                        help="comma-separated subset of fd,kd,pr,is,accuracy (default fd,kd,pr; accuracy: class "
                        "models, with --classifier)")
    parser.add_argument("--classifier", default=None, metavar="MODEL_DIR|efflite0",
                        help="classifier of the accuracy metric: a classifier model directory, or efflite0 (the "
                        "ImageNet-1k EfficientNet-Lite0, for models of ImageNet's classes)")
    parser.add_argument("--feature", default=None, help="feature network (default: the reference's)")
    parser.add_argument("--feature-weights", default=None, metavar="PATH", help="weights file of the feature network")
    parser.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (default 100)")
    parser.add_argument("--kid-subset-size", type=int, default=1000, help="KID subset size (default 1000)")
    parser.add_argument("--pr-k", type=int, default=3, help="neighbours for precision/recall (default 3)")
    parser.add_argument("--allow-size-mismatch", action="store_true",
                        help="score samples of another size than the reference's")
    parser.add_argument("--out", default=None, help="write the JSON result here (default: print it)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_sampling_arguments(parser)


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

    _add_reconstruction(verbs)
    _add_generation(verbs)
