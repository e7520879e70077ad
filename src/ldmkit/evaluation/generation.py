"""Sample-quality evaluation of a generative model: sample ``n`` images, score them against reference
statistics of real data (FD / KD / precision-recall with the reference's feature network, paper §4 and
appendix E.3.5 compare models this way), and time the sampling. The function behind ``ldm eval generation``.

Image ``i`` (0 ≤ i < n) always has the noise seed ``seed + i`` and condition ``i`` of the cycled list
(classes ``0, 1, …, K−1, 0, …`` by default; given classes or prompts cycled), so a result does not depend
on the batch size or on how many processes share the work. Under ``torchrun`` each rank samples a
contiguous share of the indices and :func:`~ldmkit.evaluation.evaluate.evaluate_images` gathers the features.
Images are streamed into the feature network batch by batch; they are never all held in memory.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ldmkit import runtime
from ldmkit.errors import ConfigError, DataError
from ldmkit.evaluation.classifier import ClassifierSource
from ldmkit.evaluation.distributed import gather_rows, is_distributed
from ldmkit.evaluation.evaluate import DEFAULT_METRICS, evaluate_images
from ldmkit.evaluation.extractor import FeatureExtractor, build_feature_extractor
from ldmkit.evaluation.stats import ReferenceStats, check_compatible, check_feature_name, load_stats

def rank_share(n: int) -> range:
    """The contiguous block of image indices ``0..n-1`` this rank samples (all of them without torchrun)."""
    if not is_distributed():
        return range(n)
    rank, world = dist.get_rank(), dist.get_world_size()
    return range(rank * n // world, (rank + 1) * n // world)


def conditions_for(pipeline: Any, n: int, *, prompts: Sequence[str] | None = None,
                   class_labels: Sequence[int] | None = None) -> tuple[list[str] | None, list[int] | None]:
    """(prompts, class labels) of images ``0..n-1``, each list cycled to length ``n`` (None where unused).

    Class models without ``class_labels`` cycle through all their classes, so every class gets ``n / K``
    images; text models need ``prompts``; unconditional models take neither.
    """
    kind, takes = pipeline.kind, pipeline.conditioning
    if prompts is not None and class_labels is not None:
        raise ConfigError("give prompts or class labels, not both")
    if takes.takes_text:
        if class_labels is not None:
            raise ConfigError(f"this model is conditioned on '{kind}', not on class labels: give --prompt or "
                              "--prompts-from-data instead of --class")
        if not prompts:
            raise ConfigError("this is a text-conditional model: give --prompt TEXT… or --prompts-from-data")
        return [prompts[i % len(prompts)] for i in range(n)], None
    if prompts is not None:
        raise ConfigError(f"this model is conditioned on '{kind}', not on text: drop --prompt/--prompts-from-data"
                          + (" (classes are cycled, or give --class)" if takes.takes_labels else ""))
    if takes.takes_labels:
        num = int(pipeline.conditioner.config.num_classes)
        labels = list(class_labels) if class_labels else list(range(num))
        bad = [int(c) for c in labels if not 0 <= int(c) < num]
        if bad:
            raise ConfigError(f"class {bad[0]} is out of range: this model knows classes 0..{num - 1}")
        return None, [int(labels[i % len(labels)]) for i in range(n)]
    if class_labels is not None:
        raise ConfigError(f"this model is conditioned on '{kind}', not on class labels; drop --class")
    return None, None


def _caption(dataset: Any, index: int) -> str:
    caption = getattr(dataset, "caption", None)
    if callable(caption):  # image-file sets read captions without decoding the image
        return str(caption(index))
    return str(dataset[index].get("caption", ""))


def captions_from_data(data: str | Mapping[str, Any], overrides: Sequence[str] = (), *, split: str = "train",
                       n: int, seed: int = 0) -> list[str]:
    """``n`` captions drawn at random from a data set — a preset name or YAML file plus ``key=value`` overrides,
    or a config as a dict (:func:`data_of_reference`) — without replacement while the set lasts, so the
    prompts follow the data's mix of captions."""
    from ldmkit.config import from_dict, load_config
    from ldmkit.data import DataConfig, build_dataset

    if isinstance(data, Mapping):
        if overrides:
            raise ConfigError("key=value overrides apply to a data preset or YAML file: pass --data PRESET|YAML")
        config = from_dict(DataConfig, dict(data))
    else:
        config = load_config(DataConfig, data, overrides, group="data")
    dataset = build_dataset(config, split)
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise DataError(f"--prompts-from-data needs a data set that can be indexed; {config.source} streams its "
                        "samples: give --prompt TEXT… instead")
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(dataset)) for _ in range(-(-n // len(dataset)))])[:n]
    captions = [_caption(dataset, int(i)) for i in order]
    if not any(captions):
        raise DataError(f"the {config.source} data set (split {split}) has no captions: give --prompt TEXT… instead")
    return captions


def data_of_reference(reference: ReferenceStats) -> tuple[dict[str, Any], str]:
    """(data config as a dict, split) that statistics made by ``ldm eval stats --data`` record."""
    recorded = reference.data_source
    if not recorded or "config" not in recorded or "split" not in recorded:
        raise ConfigError(f"the reference statistics come from '{reference.source[:60] or 'an unnamed source'}', "
                          "not from a data set config they record: name the captions' data set with --data "
                          "PRESET|YAML")
    return dict(recorded["config"]), str(recorded["split"])


def _batches(pipeline: Any, indices: range, prompts: list[str] | None, labels: list[int] | None, *,
             batch_size: int, seed: int, sample_kwargs: dict[str, Any], timer: dict[str, float],
             progress: bool) -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
    """Sampled images [B, 3, H, W] in [-1, 1] of ``indices``, batch by batch, with their class labels [B] where the
    model takes labels (the intended classes the ``accuracy`` metric scores); adds sampling time to ``timer``."""
    bar = None
    if progress and runtime.is_main_process():
        from ldmkit.progress import progress_bar

        bar = progress_bar(total=len(indices), desc="sample", unit="img")
    try:
        for lo in range(indices.start, indices.stop, batch_size):
            hi = min(lo + batch_size, indices.stop)
            start = time.perf_counter()
            images = pipeline(prompts[lo:hi] if prompts is not None else None,
                              class_label=labels[lo:hi] if labels is not None else None, n=hi - lo,
                              seed=seed + lo, batch_size=hi - lo, output="tensor", progress=False, **sample_kwargs)
            timer["seconds"] += time.perf_counter() - start
            if bar is not None:
                bar.update(images.shape[0])
            yield (images, torch.tensor(labels[lo:hi])) if labels is not None else images  # [B, 3, H, W]
    finally:
        if bar is not None:
            bar.close()


def evaluate_generation(
    pipeline: Any,
    reference: ReferenceStats | str | Path,
    *,
    n: int,
    prompts: Sequence[str] | None = None,
    class_labels: Sequence[int] | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    guidance: float = 3.0,
    guidance_rescale: float = 0.0,
    guidance_interval: tuple[float, float] | None = None,
    pag_scale: float = 0.0,
    pag_layers: Sequence[str] = (),
    guidance_parallel: float = 1.0,
    guidance_norm_threshold: float = 0.0,
    guidance_momentum: float = 0.0,
    eta: float = 0.0,
    spacing: str | None = None,
    negative_prompt: str | None = None,
    seed: int = 0,
    height: int | None = None,
    width: int | None = None,
    batch_size: int = 16,
    feature: str | FeatureExtractor | None = None,
    feature_weights: str | Path | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    classifier: ClassifierSource | None = None,
    eval_batch_size: int = 50,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    pr_k: int = 3,
    allow_size_mismatch: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Sample ``n`` images from ``pipeline`` (a :class:`~ldmkit.pipelines.LatentDiffusionPipeline`) and score
    them against ``reference`` with its feature network (default).

    Returns :func:`~ldmkit.evaluation.evaluate.evaluate_images`' result with ``settings["generation"]`` (every
    sampling setting) and timings: ``sampling_seconds`` / ``sampling_images_per_second`` (slowest rank),
    ``evaluation_seconds`` (features and metrics), ``seconds`` (total) and ``images_per_second`` (n / total).
    Mismatches with the reference (network, preprocessing, image size) are raised before any sampling.
    With ``"accuracy"`` in ``metrics`` (class models), ``classifier`` (a callable, ``"efflite0"`` or a classifier
    model directory, :mod:`~ldmkit.evaluation.classifier`) scores whether each sample shows its intended class.
    """
    started = time.perf_counter()
    if n < 2:
        raise ConfigError(f"evaluating generation needs at least 2 images, got n={n}")
    if batch_size < 1:
        raise ConfigError(f"the sampling batch size must be at least 1, got {batch_size}")
    if isinstance(reference, (str, Path)):
        reference = load_stats(reference)
    default_h, default_w = pipeline.image_size
    image_size = (height if height is not None else default_h, width if width is not None else default_w)
    all_prompts, all_labels = conditions_for(pipeline, n, prompts=prompts, class_labels=class_labels)

    # Every check that can fail runs before the first image is sampled.
    if feature is None:
        feature = reference.feature
    if isinstance(feature, str):
        check_feature_name(reference, feature)
        feature = build_feature_extractor(feature, device=pipeline.device, weights=feature_weights)
    check_compatible(reference, feature, image_size=tuple(image_size), allow_size_mismatch=allow_size_mismatch,
                     need_features=bool({"kd", "pr"} & set(metrics)))
    if "accuracy" in metrics and all_labels is None:
        raise ConfigError("the accuracy metric scores the intended class of each sample: it needs a class-conditional "
                          f"model, and this one is conditioned on '{pipeline.kind}'")

    defaults = pipeline.model.sampling_defaults  # a sampler or steps left None: the model's own
    sampler, steps = sampler or defaults["sampler"], steps or defaults["steps"]
    sample_kwargs: dict[str, Any] = {"sampler": sampler, "steps": steps, "guidance": guidance,
                                     "guidance_rescale": guidance_rescale, "guidance_interval": guidance_interval,
                                     "pag_scale": pag_scale, "pag_layers": tuple(pag_layers),
                                     "guidance_parallel": guidance_parallel,
                                     "guidance_norm_threshold": guidance_norm_threshold,
                                     "guidance_momentum": guidance_momentum, "eta": eta,
                                     "spacing": spacing,
                                     "height": height, "width": width}
    if negative_prompt is not None:
        sample_kwargs["negative_prompt"] = negative_prompt
    timer = {"seconds": 0.0}
    share = rank_share(n)
    batches = _batches(pipeline, share, all_prompts, all_labels, batch_size=batch_size, seed=seed,
                       sample_kwargs=sample_kwargs, timer=timer, progress=progress)
    result = evaluate_images(batches, reference, feature=feature, metrics=metrics, classifier=classifier,
                             batch_size=eval_batch_size,
                             kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, pr_k=pr_k,
                             allow_size_mismatch=allow_size_mismatch, progress=False)
    # The ranks sample in parallel: the slowest one sets the sampling time.
    sampling_seconds = float(gather_rows(torch.tensor([timer["seconds"]], dtype=torch.float64)).max())
    total = time.perf_counter() - started

    generation: dict[str, Any] = {
        **{k: v for k, v in sample_kwargs.items() if k != "negative_prompt"},
        "image_size": list(image_size), "n": n, "seed": seed, "batch_size": batch_size,
        "precision": getattr(pipeline, "precision", None), "conditioning": pipeline.kind,
        "world_size": dist.get_world_size() if is_distributed() else 1,
    }
    if all_labels is not None:
        generation["class_labels"] = list(class_labels) if class_labels else "all, cycled"
    if all_prompts is not None:
        distinct = list(dict.fromkeys(all_prompts))
        generation["prompts"] = distinct if len(distinct) <= 16 else distinct[:16] + ["…"]
        generation["distinct_prompts"] = len(distinct)
        generation["negative_prompt"] = negative_prompt
    result["settings"]["generation"] = generation
    result.pop("extract_seconds", None)
    result.update(
        sampling_seconds=round(sampling_seconds, 3),
        sampling_images_per_second=round(n / sampling_seconds, 3) if sampling_seconds > 0 else None,
        evaluation_seconds=round(max(total - sampling_seconds, 0.0), 3),
        seconds=round(total, 3),
        images_per_second=round(n / total, 3) if total > 0 else None,
    )
    return result
